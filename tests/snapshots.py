"""How the session's snapshot workspaces are built, and building them in the background.

`build_prepared`, `build_trained` and `build_smollm2` are what the fixtures in conftest.py run when a
snapshot is not built yet. In a run spread over processes (pytest-xdist), the first worker to finish
collecting starts this module as processes (`start_background`, one per chain of CHAINS) that build the
snapshots the selected tests need, each holding a snapshot's lock from before it starts until that
snapshot is complete. The
workers meanwhile run tests that need no snapshot; a worker that reaches one waits on its lock, as it
would for another worker building it. Before this, one worker built the trained workspace while the other
waited for it (~15 s of an idle core at the start of every run), and the SmolLM2 conversion (~25 s)
ran in the middle of the run; the conversion now runs at a lower priority from the start, in the gaps
where the suite waits on a timer or a process.

A snapshot is complete when `<name>.json` (the builder's transcripts) exists beside `<name>/`; a builder
that fails leaves no such file, and the fixture builds the snapshot itself, reporting the failure where a
test needs it (what the processes printed is in `background.log`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Which snapshots a test needs, by the fixtures it uses (directly or through other fixtures).
NEEDS = {"prepared_ws": ("prepared",), "trained_ws": ("prepared", "trained"), "smollm2_cache": ("smollm2",)}
# Each chain is built in order by a process of its own. The SmolLM2 conversion is needed last (one test,
# scheduled late): its process yields the CPU to the tests.
CHAINS = (("prepared", "trained"), ("smollm2",))
NICE = {"smollm2": 10}


def lock_path(base: Path, name: str) -> Path:
    return base / f"{name}.lock"


def done_path(base: Path, name: str) -> Path:
    return base / f"{name}.json"


def build_prepared(folder: Path) -> dict[str, str]:
    """auth .. prepare-data with the fast profile in `folder`: the builder's transcripts."""
    from harness import FAST, Ftctl

    ws = Ftctl(folder, config=FAST)
    ws.transcripts["prepare"] = ws("run", "--to", "prepare-data").stderr
    return ws.transcripts


def build_trained(prepared_folder: Path, transcripts: dict[str, str], folder: Path) -> dict[str, str]:
    """A copy of the prepared workspace trained and registered in `folder/ws`, and `folder/interrupted`,
    a copy taken while the job ran (see conftest's trained_ws): the builder's transcripts."""
    from harness import FAST, Ftctl, run_in_terminal

    built = Ftctl(prepared_folder, config=FAST).copy(folder / "ws")
    built.transcripts["prepare"] = transcripts["prepare"]
    built("submit", "--no-wait")
    built.copy(folder / "interrupted", ignore=("jobs",), relocated=False)
    built.transcripts["terminal"] = run_in_terminal(
        [sys.executable, "-m", "ftctl", "submit"], built.env(), built.root
    )
    built.transcripts["register"] = built("register").stderr
    return built.transcripts


def build_smollm2(folder: Path) -> dict[str, str]:
    """SmolLM2 converted once into the cache folder `folder` (for model.cache_dir)."""
    from ftctl.models import smollm2

    smollm2.ensure_converted(folder, str(folder), lambda line: None)
    return {}


def needed(fixturenames: set[str]) -> set[str]:
    return {name for fixture in fixturenames & NEEDS.keys() for name in NEEDS[fixture]}


def start_background(base: Path, names: set[str]) -> None:
    """Start building `names` (those not complete and not being built), a process for each chain.

    Each lock is taken here, without waiting, and handed to the process, which releases it when its
    snapshot is complete (or it gives up): no worker can start building one meanwhile."""
    for chain in CHAINS:
        taken = {name: _lock_to_build(base, name) for name in chain if name in names}
        held = {name: fd for name, fd in taken.items() if fd is not None}
        if held:
            _spawn(base, held)


def _lock_to_build(base: Path, name: str) -> int | None:
    """The lock of snapshot `name`, taken, when it is not complete and nobody holds it; else None."""
    if done_path(base, name).is_file():
        return None
    fd = os.open(lock_path(base, name), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # another worker's builder (or a fixture) holds it
        os.close(fd)
        return None
    if done_path(base, name).is_file():  # completed between the check and the lock
        os.close(fd)
        return None
    return fd


def _spawn(base: Path, held: dict[str, int]) -> None:
    import harness

    try:
        with (base / "background.log").open("ab") as log:
            subprocess.Popen(
                [sys.executable, __file__, str(base), *(f"{name}={fd}" for name, fd in held.items())],
                pass_fds=tuple(held.values()),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=base,
                env={**os.environ, **({"FTCTL_WARM": harness.WARM} if harness.WARM else {})},
            )
    finally:
        for fd in held.values():
            os.close(fd)  # the process holds the locks now (the same open file descriptions)


def _build(base: Path, name: str) -> dict[str, str]:
    folder = base / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    if name == "prepared":
        return build_prepared(folder)
    if name == "trained":
        prepared = json.loads(done_path(base, "prepared").read_text())
        return build_trained(base / "prepared", prepared, folder)
    return build_smollm2(folder)


def main(argv: list[str]) -> int:
    """`snapshots.py BASE NAME=FD ...`: build each snapshot in order, releasing its lock (FD) when done."""
    sys.path.insert(0, str(TESTS))
    import harness

    harness.WARM = os.environ.get("FTCTL_WARM")  # the worker's warm process, for the ftctl run here
    base, held = Path(argv[0]), [item.split("=") for item in argv[1:]]
    for name, fd in held:
        try:
            if name == "trained" and not done_path(base, "prepared").is_file():
                continue  # building prepared failed: the fixtures build both, and report why
            if name in NICE:
                os.nice(NICE[name])
            if name == "smollm2":
                from ftctl.models import smollm2

                if smollm2.missing():
                    continue  # the test is skipped, saying what to install
            transcripts = _build(base, name)
            done_path(base, name).write_text(json.dumps(transcripts))
            print(f"built {name}", flush=True)
        except Exception as exc:  # noqa: BLE001 - the fixture rebuilds it and reports the failure
            print(f"building {name} failed: {exc!r}", flush=True)
        finally:
            with contextlib.suppress(OSError):
                os.close(int(fd))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
