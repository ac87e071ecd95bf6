"""Two terminals: two `ftctl` processes on one workspace at once, 50 seeded trials.

Every command that changes the state takes the workspace lock. For each pair:
  - each process exits 0, or 1 with "locked by another ftctl (pid <the other one's pid>" (the loser of
    the lock with a short lock_timeout_s); `status` never waits and never fails;
  - while they run, the state file is read over and over: it always exists and parses;
  - afterwards the stages' (status, attempt) equal what running the two commands one after the other
    gives, in one of the two orders (or the winner's alone when the other lost the lock): no lost
    update, no mix of the two.
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

from ftctl.pipeline import ORDER, downstream

from .conftest import Workspace

Model = dict[str, tuple[str, int]]  # stage -> (status, attempt)
LOCKED = re.compile(r"locked by another ftctl \(pid (\d+) on ")


def apply(model: Model, command: tuple[str, ...]) -> Model:
    """What a command does to the stages' (status, attempt), when it runs alone."""
    out = dict(model)
    if command[0] == "reset":
        for name in ORDER if command[1] == "--all" else [command[1], *downstream(command[1])]:
            out[name] = ("pending", 0)
    elif command[0] == "run":  # run --to STAGE: every stage up to it that has not succeeded runs
        for name in ORDER[: ORDER.index(command[2]) + 1]:
            status, attempt = out[name]
            if status != "succeeded":
                out[name] = ("succeeded", attempt + 1)
    elif command[0] == "auth":  # auth --force
        out["auth"] = ("succeeded", out["auth"][1] + 1)
    return out


def observed(w: Workspace) -> Model:
    stages = w.state()["stages"]
    return {name: (stages[name]["status"], stages[name]["attempt"]) if name in stages else ("pending", 0)
            for name in ORDER}  # fmt: skip


CHEAP = [
    ("status",),
    ("reset", "pick-model"),
    ("reset", "prepare-data"),
    ("reset", "submit"),
    ("run", "--to", "pick-model"),
    ("run", "--to", "pick-model"),
    ("run", "--to", "auth"),
]
HEAVY = [("run", "--to", "check-compute"), ("reset", "--all"), ("auth", "--force")]


def trials() -> list[tuple[tuple[str, ...], float, tuple[str, ...], float, float | None]]:
    """(command A, its lock_timeout_s, command B, its lock_timeout_s, B's start delay), seeded. A delay
    of None starts B once A holds the lock."""
    rng = random.Random("two-terminals")
    plan: list[tuple[tuple[str, ...], float, tuple[str, ...], float, float | None]] = []
    # A long lock holder (auth imports MLflow under the lock) against short waiters that must fail
    # naming it, and a long one that must wait and then succeed.
    for other, timeout in [(("run", "--to", "pick-model"), 0.2), (("reset", "submit"), 0.0),
                           (("reset", "pick-model"), 30.0)]:  # fmt: skip
        plan.append((("auth", "--force"), 30.0, other, timeout, None))
    for _ in range(1):
        plan.append((rng.choice(HEAVY), rng.choice([0.0, 20.0]), rng.choice(CHEAP), rng.choice([0.0, 20.0]),
                     rng.uniform(0, 0.3)))  # fmt: skip
    while len(plan) < 50:
        plan.append((rng.choice(CHEAP), rng.choice([0.0, 0.05, 0.5, 20.0]), rng.choice(CHEAP),
                     rng.choice([0.0, 0.05, 0.5, 20.0]), rng.uniform(0, 0.25)))  # fmt: skip
    rng.shuffle(plan)
    return plan


def test_two_ftctl_processes_on_one_workspace(shared_ws: Workspace) -> None:
    w = shared_ws
    w.restore("prepared")
    model = observed(w)
    stats = {"lock_failures": 0, "waited": 0, "state_reads": 0}
    for number, (cmd_a, timeout_a, cmd_b, timeout_b, delay) in enumerate(trials(), 1):
        a = w.start("--set", f"lock_timeout_s={timeout_a}", *cmd_a)
        end = time.monotonic() + (delay or 120)
        while time.monotonic() < end and (delay is not None or lock_owner(w) != a[0].pid):
            assert delay is not None or a[0].poll() is None, "A ended before it held the lock"
            stats["state_reads"] += read_state(w)
            time.sleep(0.005)
        b = w.start("--set", f"lock_timeout_s={timeout_b}", *cmd_b)
        while a[0].poll() is None or b[0].poll() is None:
            stats["state_reads"] += read_state(w)  # a third reader: never a missing or half file
            time.sleep(0.005)
        out_a, out_b = w.finish(a, code=None), w.finish(b, code=None)
        where = f"trial {number}: A `{' '.join(cmd_a)}` ({timeout_a}s) | B `{' '.join(cmd_b)}` ({timeout_b}s)"

        ok = {}
        for me, other, out, cmd in ((a, b, out_a, cmd_a), (b, a, out_b, cmd_b)):
            assert "Traceback" not in out.stderr, f"{where}\n{out.describe()}"
            assert "taking over the workspace lock" not in out.stderr, f"{where}\n{out.describe()}"
            if out.code == 0:
                ok[id(me)] = True
                stats["waited"] += "waiting up to" in out.stderr
                continue
            assert cmd[0] != "status", f"{where}: status must never wait or fail\n{out.describe()}"
            assert out.code == 1, f"{where}\n{out.describe()}"
            found = LOCKED.search(out.stderr)
            assert found, f"{where}: the loser must name the owner\n{out.describe()}"
            assert int(found.group(1)) == other[0].pid, f"{where}: names pid {found.group(1)}\n{out.stderr}"
            stats["lock_failures"] += 1
            ok[id(me)] = False
        assert any(ok.values()), f"{where}: both failed\n{out_a.describe()}\n{out_b.describe()}"

        if ok[id(a)] and ok[id(b)]:
            allowed = [apply(apply(model, cmd_a), cmd_b), apply(apply(model, cmd_b), cmd_a)]
        else:
            allowed = [apply(model, cmd_a if ok[id(a)] else cmd_b)]
        now = observed(w)
        assert now in allowed, f"{where}: the state is none of the writers' results\n{now}\n{allowed}"
        model = now
    print(f"\n50 two-terminal trials: {stats}")
    assert stats["lock_failures"] >= 2, stats  # at least the two designed ones
    assert stats["waited"] >= 1, stats


def lock_owner(w: Workspace) -> int | None:
    try:
        return int(json.loads((w.ws / "lock").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_state(w: Workspace) -> int:
    text = (w.ws / "state.json").read_text(encoding="utf-8")  # FileNotFoundError fails the test
    data: Any = json.loads(text)
    assert isinstance(data["stages"], dict)
    return 1


def test_a_lock_let_go_while_the_loser_looks_is_taken_not_blamed_on_pid_none(tmp_path) -> None:
    """Found by the campaign above under pytest-xdist: the holder empties its record and then lets go;
    a waiter with lock_timeout_s=0 that tried the lock just before read the emptied record and failed
    with "locked by another ftctl (pid None on None ...)". A lock that gets free while the waiter looks
    for its holder's name is now taken."""
    import fcntl
    import os
    import threading

    from ftctl.state import LOCK_FILE, WorkspaceLock

    (tmp_path / LOCK_FILE).write_text("")  # the record as a holder leaves it right before letting go
    holder = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.3, lambda: fcntl.flock(holder, fcntl.LOCK_UN)).start()
    lock = WorkspaceLock(tmp_path, "ftctl reset pick-model", timeout_s=0.0, notify=lambda _: None)
    try:
        lock.acquire()  # raised LockTimeout naming "pid None" before the fix
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    finally:
        lock.release()
        os.close(holder)
