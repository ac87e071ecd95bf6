"""The warm process (ftctl.backends.local.warm): a process it forks is the process a cold start would
have been, it serves nothing it cannot serve faithfully, and nothing it starts outlives what it is tied to.

The warm processes here import only ftctl's served modules (`preload=False`): what is tested is how a
process is forked, kept and ended, the same whatever was imported before the fork. The suite's own warm
process (conftest), fully loaded, forks the trainers and endpoints of every other test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness
from ftctl.backends.local import procs, warm

from .conftest import proc_state

pytestmark = pytest.mark.integration

SERVER = "ftctl.backends.local.server"
TRAINER = "ftctl.backends.local.trainer"


def wait_for(predicate, timeout_s: float = 30.0, what: str = "it") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s} s"
        time.sleep(0.02)


def ended(pid: int) -> bool:
    return proc_state(pid) in ("Z", "X", "gone")


def start_warm(tmp: Path) -> warm.Started:
    before = warm._started
    try:
        return warm.start(env=harness.clean_environ(), idle_s=600, log=tmp / "warm.log", preload=False)
    finally:
        warm._started = before  # the tests ask theirs by its address; this process keeps the suite's


@pytest.fixture(scope="module")
def warm_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[warm.Started]:
    started = start_warm(tmp_path_factory.mktemp("warm"))
    try:
        yield started
    finally:
        os.kill(started.pid, signal.SIGTERM)
        wait_for(lambda: ended(started.pid), what="the warm process's end")


def env_for(address: str, **extra: str) -> dict[str, str]:
    return {**harness.clean_environ(), warm.ENV: address, **extra}


def server_command(tmp: Path, fd: int, handoff: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        SERVER,
        f"--model-dir={tmp / 'no-model'}",
        f"--key-file={tmp / 'key'}",
        f"--fd={fd}",
        f"--handoff-fd={handoff}",
    ]


def inode(path: str) -> str:
    return os.readlink(path)


def test_a_forked_server_is_the_process_a_cold_start_would_be(
    warm_process: warm.Started, tmp_path: Path
) -> None:
    """Same command line, folder, session, open descriptors at the same numbers, output and exit code as
    `python -m ftctl.backends.local.server ...` started cold with the same arguments."""
    outcomes = {}
    for how in ("cold", "warm"):
        sock = __import__("socket").create_server(("127.0.0.1", 0))
        handoff_read, handoff_write = os.pipe()
        log = tmp_path / f"{how}.log"
        command = server_command(tmp_path, sock.fileno(), handoff_read)
        env = {
            **(env_for(warm_process.address) if how == "warm" else harness.clean_environ()),
            "FTCTL_MARK": how,
        }
        with open(log, "wb") as out, open(os.devnull, "rb") as devnull:
            if how == "warm":
                child = warm.launch(
                    command,
                    stdio=[devnull.fileno(), out.fileno(), out.fileno()],
                    cwd=tmp_path,
                    env=env,
                    pass_fds=[sock.fileno(), handoff_read],
                )
                assert child is not None, (tmp_path / "warm.log").read_text()
            else:
                child = subprocess.Popen(
                    command,
                    stdin=devnull,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=tmp_path,
                    env=env,
                    pass_fds=[sock.fileno(), handoff_read],
                    start_new_session=True,
                )
        pid = child.pid
        found = procs.started_identity(pid, child)
        assert found is not None and found["cmdline"] == command
        assert Path(f"/proc/{pid}/cwd").resolve() == tmp_path.resolve()
        assert found["pgid"] == pid  # a session and process group of its own
        for number, ours in ((sock.fileno(), sock.fileno()), (handoff_read, handoff_read)):
            assert inode(f"/proc/{pid}/fd/{number}") == inode(f"/proc/self/fd/{ours}")
        assert procs.same_process(found)
        assert f"FTCTL_MARK={how}\0".encode() in Path(f"/proc/{pid}/environ").read_bytes()
        sock.close()
        os.close(handoff_read)
        os.close(handoff_write)  # unsigned: the server refuses to run unrecorded and exits
        code = child.wait(timeout=60)
        assert not procs.alive(found)
        text = log.read_text()
        outcomes[how] = (code, text[text.index("ERROR") :].strip() if "ERROR" in text else text)
    assert outcomes["warm"] == outcomes["cold"]
    assert outcomes["cold"][0] != 0 and "exited before recording it" in outcomes["cold"][1]


def test_the_child_takes_the_asking_process_environment_folder_and_exit(
    warm_process: warm.Started, tmp_path: Path
) -> None:
    """FTCTL_* variables may differ (ftctl reads them at run time); the exit code and stderr come back."""
    assert_serves(warm_process, tmp_path)


def assert_serves(warm_process: warm.Started, tmp_path: Path, **extra: str) -> None:
    """A damaged job spec in the folder asked for: read there (relative path), reported, exit 2."""
    log = tmp_path / "out.log"
    (tmp_path / "job").mkdir(exist_ok=True)
    (tmp_path / "job" / "spec.json").write_text("{damaged")
    with open(log, "wb") as out:
        child = warm.launch(
            [sys.executable, "-m", TRAINER, "job"],
            stdio=[0, out.fileno(), out.fileno()],
            cwd=tmp_path,
            env=env_for(warm_process.address, FTCTL_SOMETHING="1", **extra),
            tied=True,
        )
    assert child is not None
    assert child.wait(timeout=60) == 2
    text = log.read_text()
    assert "job/spec.json" in text and "No such file" not in text, text


def test_a_variable_read_while_loading_must_match_or_it_starts_cold(
    warm_process: warm.Started, tmp_path: Path
) -> None:
    """OMP_NUM_THREADS is read by the OpenMP runtime as torch loads: a child forked with another value
    would not be what a cold start is. Refused; the caller then starts it cold."""
    with open(os.devnull, "wb") as out:
        child = warm.launch(
            [sys.executable, "-m", TRAINER, "x"],
            stdio=[0, out.fileno(), out.fileno()],
            env=env_for(warm_process.address, OMP_NUM_THREADS="7"),
        )
    assert child is None
    log = Path(warm_process_log(warm_process)).read_text()
    assert "the environment differs in OMP_NUM_THREADS" in log


def test_variables_nothing_read_while_loading_may_differ(warm_process: warm.Started, tmp_path: Path) -> None:
    assert_serves(warm_process, tmp_path, SOMETHING_NO_LIBRARY_READS="1")


def test_the_reads_of_the_imports_are_recorded() -> None:
    """What decides which variables must match: every way Python code reads one is seen."""
    with warm._recording_reads() as read:
        os.environ.get("FTCTL_TEST_A")
        os.getenv("FTCTL_TEST_B")
        _ = "FTCTL_TEST_C" in os.environ
        with __import__("contextlib").suppress(KeyError):
            os.environ["FTCTL_TEST_D"]
    assert {"FTCTL_TEST_A", "FTCTL_TEST_B", "FTCTL_TEST_C", "FTCTL_TEST_D"} <= read
    os.environ.get("FTCTL_TEST_E")
    assert "FTCTL_TEST_E" not in read  # recording ends with the block


def warm_process_log(started: warm.Started) -> str:
    return os.readlink(f"/proc/{started.pid}/fd/1")


def test_what_it_does_not_serve_is_refused(warm_process: warm.Started, tmp_path: Path) -> None:
    env = env_for(warm_process.address)
    assert (
        warm.launch([sys.executable, "-m", "ftctl.backends.local.jobs", "x"], stdio=[0, 1, 2], env=env)
        is None
    )
    assert warm.launch([sys.executable, "-c", "print(1)"], stdio=[0, 1, 2], env=env) is None
    other = tmp_path / "python"
    other.symlink_to("/bin/true")  # another program, under a python's name
    assert warm.launch([str(other), "-m", TRAINER, "x"], stdio=[0, 1, 2], env=env) is None
    assert "is not this process's interpreter" in Path(warm_process_log(warm_process)).read_text()


def test_a_damaged_request_is_refused_and_it_serves_on(warm_process: warm.Started, tmp_path: Path) -> None:
    import socket

    for payload in (b"", b"{not json", b'{"module": 3}', "\udcff".encode("utf-8", "surrogatepass"), b"[]"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.settimeout(60)
            conn.connect("\0" + warm_process.address)
            conn.send(payload or b" ")
            assert b"refused" in conn.recv(4096)
    assert_serves(warm_process, tmp_path)


def test_a_tied_child_ends_when_the_process_that_asked_for_it_is_killed(
    warm_process: warm.Started, tmp_path: Path
) -> None:
    """As a cold trainer dies with its supervisor (PR_SET_PDEATHSIG): kill -9 the asker, the child ends."""
    script = """
import os, sys, time
from ftctl.backends.local import warm
child = warm.launch(sys.argv[2:], stdio=[0, 1, 2], pass_fds=[int(sys.argv[1])], tied=True)
print(child.pid, flush=True)
time.sleep(300)
"""
    r, w = os.pipe()
    server = server_command(tmp_path, 0, r)  # waits on its handoff pipe until killed
    asker = subprocess.Popen(
        [sys.executable, "-c", script, str(r), *server],
        env=env_for(warm_process.address),
        stdout=subprocess.PIPE,
        pass_fds=[r],
        text=True,
    )
    os.close(r)
    try:
        pid = int(asker.stdout.readline())  # type: ignore[union-attr]
        assert not ended(pid)
        asker.kill()
        asker.wait()
        wait_for(lambda: ended(pid), timeout_s=10, what="the tied child's end")
    finally:
        os.close(w)
        asker.kill()


def test_killing_the_warm_process_ends_its_tied_children_and_it_leaves_nothing(tmp_path: Path) -> None:
    """A tied child gets SIGTERM from the kernel when the warm process dies, and its asker learns so."""
    started = start_warm(tmp_path)
    r, w = os.pipe()
    try:
        child = warm.launch(
            server_command(tmp_path, 0, r),
            stdio=[0, 1, 2],
            env=env_for(started.address),
            pass_fds=[r],
            tied=True,
        )
        assert child is not None and child.poll() is None
        os.kill(started.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGTERM
        assert ended(child.pid)
    finally:
        os.close(r)
        os.close(w)


def test_it_ends_with_its_owner(tmp_path: Path) -> None:
    """Started by a process that then exits (an `ftctl run` that is done), it exits too."""
    script = f"""
from pathlib import Path
from ftctl.backends.local import warm
print(warm.start(log=Path({str(tmp_path / "warm.log")!r})).pid, flush=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=harness.clean_environ(),
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(done.stdout)
    wait_for(lambda: ended(pid), timeout_s=60, what="the warm process's end")


def test_ftctl_run_starts_one_that_forks_its_endpoint_and_goes_with_it(
    trained_ws: harness.Ftctl, tmp_path: Path
) -> None:
    """`ftctl run` with no warm process given starts its own when it will serve (or train), the
    endpoint server is forked from it, and once the run is over the warm process is gone: the endpoint,
    which is not tied to it, serves on until teardown."""
    ws = trained_ws.copy(tmp_path / "ws")
    ws.environ["FTCTL_WARM"] = ""  # none given: the run starts its own
    run = subprocess.Popen(ws.argv("run", "--to", "deploy"), env=ws.env(), cwd=ws.root,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    log = (ws.workspace / "warm.log").read_text()
    assert "[ftctl warm] loaded in" in log and "-m ftctl.backends.local.server" in log, log
    owned = f"--owner={run.pid}:"
    wait_for(lambda: not any(owned in " ".join(procs._cmdline(int(p)) or []) for p in os.listdir("/proc")
                             if p.isdigit()), timeout_s=30, what="the run's warm process's end")  # fmt: skip
    server = ws.outputs("deploy")["process"]
    assert procs.alive(server) and server["cmdline"][1:3] == ["-m", SERVER]
    ws("teardown")
    assert not procs.alive(server)


def test_off_starts_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FTCTL_WARM=off: no warm process is started or asked; everything starts cold."""
    import io

    from ftctl.config import load_config
    from ftctl.context import Context
    from ftctl.ui import UI

    monkeypatch.setenv(warm.ENV, warm.OFF)
    monkeypatch.setattr(warm, "_started", None)
    monkeypatch.setattr(warm, "start", lambda *a, **k: pytest.fail("a warm process was started"))
    config = load_config(environ={}, backend="local")
    ctx = Context(workspace=tmp_path / ".ftctl", config=config, ui=UI(err=io.StringIO()))
    ctx.backend.warm_up(["submit", "deploy"])
    assert warm.launch([sys.executable, "-m", TRAINER, "x"], stdio=[0, 1, 2]) is None
    assert warm.last_refusal == "no warm process"


@pytest.mark.parametrize("address", ["x" * 300, "\udcff", " ", "ftctl-warm-0-nobody-listens"])
def test_a_damaged_or_dead_address_starts_cold(address: str, tmp_path: Path) -> None:
    """FTCTL_WARM too long for a socket address, not text, or naming nothing: started cold, never an error."""
    env = env_for(address)
    assert warm.launch([sys.executable, "-m", TRAINER, "x"], stdio=[0, 1, 2], env=env) is None
    assert warm.last_refusal is not None and warm.last_refusal.startswith("the warm process did not answer")


def test_imports_run_without_collections_and_leave_them_on_for_the_children() -> None:
    import gc

    frozen = gc.get_freeze_count()
    try:
        with warm._frozen_after():
            assert not gc.isenabled()
            made = [[] for _ in range(1000)]
        assert gc.isenabled()  # a forked child collects as a cold one does
        assert gc.get_freeze_count() >= frozen + len(made)  # what the imports made: out of the way
    finally:
        gc.unfreeze()
