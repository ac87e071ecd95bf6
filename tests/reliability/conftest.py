"""The reliability campaign's harness: ftctl as a real subprocess against a throwaway workspace.

Everything here runs `python -m ftctl` (or a fault injector wrapping it) as a separate process, kills it
with SIGKILL where a test says so, and inspects what is left: the state file, the workspace's files, and
the processes found in /proc whose command line names the workspace.

Expensive setup is shared: the campaign's workspace is prepared once and saved as a snapshot, and the
session's trained and registered workspace (tests/conftest.py, the suite's one fast profile) is adopted
as another (`Workspace.adopt`, relocated); a trial restores a snapshot into the *same* path, so every
absolute path recorded in the state file and in MLflow stays valid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import FAST_ENVIRON, Ftctl, clean_environ

# The suite's one fast training profile (harness.FAST_ENVIRON) for every command of the campaign, through
# the environment so that every command (and therefore every fingerprint) sees it; plus short replies and
# a patient endpoint start (a loaded machine), which no stage before deploy reads.
FAST_ENV = {
    **FAST_ENVIRON,
    "FTCTL_SCORE__MAX_NEW_TOKENS": "4",
    "FTCTL_DEPLOY__READY_TIMEOUT_S": "240",
}

SERVER_MODULE = "ftctl.backends.local.server"
JOB_MODULES = ("ftctl.backends.local.jobs", "ftctl.backends.local.trainer")

# Runs ftctl with a fault injected: SIGKILL itself at a chosen point.
#   replace K   -- just before the K-th os.replace (every file commit of ftctl goes through it)
#   spawn       -- right after a detached process (job wrapper, endpoint server) was spawned
INJECTOR = r"""
import os, runpy, signal, sys
mode, arg = sys.argv[1], sys.argv[2]
if mode == "replace":
    limit, calls, real = int(arg), [0], os.replace
    def replace(*a, **kw):
        calls[0] += 1
        if calls[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)
    os.replace = replace
elif mode == "spawn":
    from ftctl.backends.local import procs
    real_spawn = procs.spawn
    def spawn(*a, **kw):
        real_spawn(*a, **kw)
        os.kill(os.getpid(), signal.SIGKILL)
    procs.spawn = spawn
elif mode == "count":
    import atexit
    calls, real = [0], os.replace
    def replace(*a, **kw):
        calls[0] += 1
        return real(*a, **kw)
    os.replace = replace
    atexit.register(lambda: open(arg, "w").write(str(calls[0])))
sys.argv = ["ftctl", *sys.argv[3:]]
runpy.run_module("ftctl", run_name="__main__", alter_sys=True)
"""


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return clean_environ(extra)


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def proc_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat.rsplit(")", 1)[1].split()[0]


def live_pids(module: str | tuple[str, ...], mentions: str) -> list[int]:
    """Pids of live (not zombie) `python -m <module>` processes with an argument mentioning `mentions`."""
    modules = (module,) if isinstance(module, str) else module
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        args = cmdline(int(entry))
        if not args or proc_state(int(entry)) in ("Z", "X", "gone"):
            continue
        if any(m in args for m in modules) and any(mentions in a for a in args):
            found.append(int(entry))
    return sorted(found)


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(proc_state(p) not in ("Z", "X", "gone") for p in pids):
        time.sleep(0.05)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that `pid` holds (from /proc/net/tcp{,6})."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != "0A" or inode not in inodes:
                    continue
                hex_addr, hex_port = local.split(":")
                found.append((_decode_addr(hex_addr, width), int(hex_port, 16)))
    return found


def _decode_addr(hex_addr: str, width: int) -> str:
    raw = bytes.fromhex(hex_addr)
    if width == 8:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    full = b"".join(words)
    if full[:12] == b"\0" * 10 + b"\xff\xff":
        return "::ffff:" + ".".join(str(b) for b in full[12:])
    return ":".join(full[i : i + 2].hex() for i in range(0, 16, 2))


@dataclass
class Outcome:
    """What happened to one ftctl process of a trial."""

    args: tuple[str, ...]
    code: int | None  # None: killed by the test
    stdout: str
    stderr: str
    killed: bool
    killed_in_stage: bool  # the kill landed after the stage was recorded running

    def describe(self) -> str:
        return (
            f"ftctl {' '.join(self.args)} -> {'killed' if self.killed else self.code}\n"
            f"--- stdout\n{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}"
        )


class Workspace(Ftctl):
    """The harness in its process mode, for fault injection: one ftctl workspace at a fixed path, with
    snapshots to restore it from. Every command gets FAST_ENV; `env` is the whole environment."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(root, environ={**FAST_ENV, **(env or {})})
        self.ws = self.workspace
        self.snapshots = root.parent / f"{root.name}-snapshots"
        self.env = base_env(self.environ)  # type: ignore[assignment, method-assign]
        self.logs = root.parent / f"{root.name}-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self.timings: dict[str, float] = {}

    # --- running ftctl -----------------------------------------------------------------------------

    def argv(self, *args: str, inject: tuple[str, str] | None = None) -> list[str]:
        if inject is None:
            return super().argv(*args)
        return [sys.executable, "-c", INJECTOR, *inject, *self.args(*args)]

    def run(self, *args: str, code: int | None = 0, timeout: float = 300, **kw: Any) -> Outcome:
        out = self.start(*args, **kw)
        return self.finish(out, timeout=timeout, code=code)

    def start(
        self, *args: str, inject: tuple[str, str] | None = None, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], tuple[str, ...], Path, Path]:
        self._n += 1
        out, err = self.logs / f"{self._n:04d}.out", self.logs / f"{self._n:04d}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen(
                self.argv(*args, inject=inject),
                stdout=fo,
                stderr=fe,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                env={**self.env, **(env or {})},
                start_new_session=True,  # its own process group: the test kills ftctl and its children
            )
        return proc, tuple(args), out, err

    def finish(
        self,
        started: tuple[subprocess.Popen[bytes], tuple[str, ...], Path, Path],
        *,
        timeout: float = 300,
        code: int | None = 0,
        killed: bool = False,
        killed_in_stage: bool = False,
    ) -> Outcome:
        proc, args, out, err = started
        began = time.monotonic()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise AssertionError(f"ftctl {' '.join(args)} did not finish in {timeout} s") from None
        with open(self.logs / "timings.tsv", "a") as handle:  # for finding what makes the suite slow
            handle.write(f"{out.stem}\t{time.monotonic() - began:.2f}\t{proc.returncode}\t{' '.join(args)}\n")
        outcome = Outcome(
            args,
            None if killed else proc.returncode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
            killed,
            killed_in_stage,
        )
        if not killed and code is not None:
            assert proc.returncode == code, f"wanted exit {code}\n{outcome.describe()}"
        return outcome

    def kill_during(
        self,
        stage: str,
        *args: str,
        delay: float,
        after: Callable[[str], bool] | None = None,
        from_start: bool = False,
        timeout: float = 300,
    ) -> Outcome:
        """Start `ftctl args`, wait until `after(its stderr so far)` holds (default: `stage` recorded
        running, a new attempt), sleep `delay`, then SIGKILL its process group. Returns what happened."""
        before = self.record(stage).get("attempt", 0)

        def running(_stderr: str) -> bool:
            rec = self.record(stage)
            return rec.get("status") == "running" and rec.get("attempt", 0) > before

        condition = after or running
        started = self.start(*args)
        proc, err_path = started[0], started[3]
        deadline = time.monotonic() + timeout
        seen = from_start
        while not seen and proc.poll() is None and time.monotonic() < deadline:
            seen = condition(err_path.read_text(errors="replace"))
            if not seen:
                time.sleep(0.01)
        if seen:
            end = time.monotonic() + delay
            while proc.poll() is None and time.monotonic() < end:
                time.sleep(0.005)
        killed = proc.poll() is None
        if killed:
            kill_group(proc)
        in_stage = killed and seen and not from_start
        return self.finish(started, code=None, killed=killed, killed_in_stage=in_stage)

    # --- reading the workspace ---------------------------------------------------------------------

    def servers(self) -> list[int]:
        return live_pids(SERVER_MODULE, str(self.ws))

    def job_processes(self) -> list[int]:
        return live_pids(JOB_MODULES, str(self.ws))

    def kill_strays(self) -> None:
        kill_pids(self.servers() + self.job_processes())

    # --- snapshots -----------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return (self.snapshots / name).is_dir()

    def save(self, name: str) -> None:
        target = self.snapshots / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(self.ws, target, symlinks=True)

    def restore(self, name: str) -> None:
        self.kill_strays()
        if self.ws.exists():
            shutil.rmtree(self.ws)
        shutil.copytree(self.snapshots / name, self.ws, symlinks=True)

    def adopt(self, other: Ftctl, name: str) -> None:
        """Save another workspace (one of the session's snapshots, endpoint down) as snapshot `name`,
        relocated to this workspace's path."""
        self.kill_strays()
        self.load(other)
        self.save(name)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def registered_versions(ws: Path) -> list[tuple[str, str]]:
    """(name, version) of every model version in the workspace's MLflow registry (read with sqlite3)."""
    db = ws / "mlflow.db"
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        try:
            return [(n, str(v)) for n, v in conn.execute("SELECT name, version FROM model_versions")]
        except sqlite3.OperationalError:
            return []


def timed(w: Workspace, stage: str, *args: str) -> tuple[Outcome, float]:
    """Run `ftctl stage args` normally; also return the seconds from its running record to its exit."""
    started = w.start(stage, *args)
    proc = started[0]
    seen_at = None
    while proc.poll() is None:
        if seen_at is None and w.record(stage).get("status") == "running":
            seen_at = time.monotonic()
        time.sleep(0.01)
    done = w.finish(started)
    return done, time.monotonic() - (seen_at or time.monotonic())


CHEAP_STAGES = ("auth", "pick-model", "check-compute", "prepare-data")


@pytest.fixture(scope="session")
def shared_ws(reliability_root: Path) -> Workspace:
    """One workspace path for the pipeline tests, with the snapshot "prepared" (the first four stages,
    each run on its own and timed: `timings[stage]` is the seconds from its running record to exit).
    Later snapshots ("trained", "registered") are added by the tests that produce them."""
    ws = Workspace(reliability_root / "ws")
    for stage in CHEAP_STAGES:
        _, seconds = timed(ws, stage)
        ws.timings[stage] = seconds
    ws.save("prepared")
    return ws


@pytest.fixture(scope="session")
def reliability_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("reliability")
    yield root
    # Whatever a test left running under these workspaces (a failed assertion mid-trial) goes now.
    kill_pids(live_pids((SERVER_MODULE, *JOB_MODULES), str(root)))
