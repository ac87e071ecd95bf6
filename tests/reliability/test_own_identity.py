"""Process identity: a recorded pid that now belongs to another process is an ended process.

Each case records, for a live unrelated process (a `sleep` leading its own session, as a reused pid
would), an identity that is not its own: same pid, another start time or command line, or a bare pid
from an older record. ftctl must never signal it (teardown, deploy's retire, submit's retire), never
count it as a live endpoint, and never follow it as a running training job.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ftctl.backends.local import procs
from ftctl.stages.contract import StageCall


def make_ctx(workspace: Path) -> Any:
    from ftctl.config import load_config
    from ftctl.context import Context
    from ftctl.ui import UI

    workspace.mkdir(parents=True, exist_ok=True)
    return Context(
        workspace=workspace, config=load_config(environ={}, backend="local"), ui=UI(err=io.StringIO())
    )


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated live process leading its own process group (what a reused pid may be)."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    # Right after exec the kernel briefly shows an empty command line: wait until it names `sleep`.
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while not cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def running(proc: subprocess.Popen[bytes]) -> bool:
    time.sleep(0.2)  # a signal, had one been sent, has landed by now
    return proc.poll() is None


def proc_identity(pid: int) -> dict[str, Any]:
    """What ftctl records of a process, read here from /proc independently of ftctl."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return {"pid": pid, "start": int(fields[19]), "boot": boot, "cmdline": [c.decode() for c in cmdline],
            "pgid": int(fields[2])}  # fmt: skip


def fakes(pid: int) -> list[dict[str, Any]]:
    """Identities for `pid` that are not its process's: another start time, another command line."""
    real = proc_identity(pid)
    server = [sys.executable, "-m", "ftctl.backends.local.server", "--key-file", "/nowhere.key"]
    return [{**real, "start": real["start"] - 1}, {**real, "cmdline": server}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def endpoint_outputs(ws: Path, pid: int, port: int, process: dict[str, Any] | None) -> dict[str, Any]:
    (ws / "secrets").mkdir(parents=True, exist_ok=True)
    key = ws / "secrets" / "ep.key"
    key.write_text("k")
    out = {"endpoint_name": "ep", "pid": pid, "host": "127.0.0.1", "port": port, "key_file": str(key),
           "url": f"http://127.0.0.1:{port}"}  # fmt: skip
    if process is not None:
        out["process"] = process
    return out


def test_identity_matches_only_the_same_process(bystander: subprocess.Popen[bytes]) -> None:
    real = procs.identity(bystander.pid)
    assert real == proc_identity(bystander.pid)
    assert real is not None and real["cmdline"] == ["sleep", "300"] and real["pgid"] == bystander.pid
    assert procs.alive(real)
    for fake in fakes(bystander.pid):
        assert not procs.alive(fake)
        assert not procs.send(fake, signal.SIGTERM)
        assert not procs.stop(fake, timeout_s=0.1)
    assert running(bystander)
    assert procs.stop(real, timeout_s=5)  # the real one is stopped, group and all
    assert bystander.wait(timeout=5) == -signal.SIGTERM


@pytest.mark.parametrize("variant", ["start", "cmdline", "bare pid"])
def test_teardown_never_signals_a_reused_pid(
    tmp_path: Path, bystander: subprocess.Popen[bytes], variant: str
) -> None:
    from ftctl.backends.local.stages import teardown

    ws = tmp_path / "ws"
    ctx = make_ctx(ws)
    process = {"start": fakes(bystander.pid)[0], "cmdline": fakes(bystander.pid)[1], "bare pid": None}[
        variant
    ]
    outputs = endpoint_outputs(ws, bystander.pid, free_port(), process)
    state = {"stages": {"deploy": {"status": "succeeded", "outputs": outputs}}}
    result = teardown.run(ctx, StageCall("teardown", state))
    assert running(bystander), "teardown signalled a process that is not the endpoint's server"
    assert result["stopped"] is False and result["port_closed"] is True
    assert not Path(outputs["key_file"]).exists()


@pytest.mark.parametrize("variant", ["start", "cmdline", "bare pid"])
def test_deploy_neither_trusts_nor_retires_a_reused_pid(
    tmp_path: Path, bystander: subprocess.Popen[bytes], variant: str
) -> None:
    from ftctl.backends.local.stages import deploy

    ws = tmp_path / "ws"
    ctx = make_ctx(ws)
    with socket.socket() as listener:  # the recorded port is open (another process took it, say)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        process = {"start": fakes(bystander.pid)[0], "cmdline": fakes(bystander.pid)[1], "bare pid": None}
        outputs = endpoint_outputs(ws, bystander.pid, listener.getsockname()[1], process[variant])
        assert not deploy.alive(ctx, outputs), "a reused pid was taken for the live endpoint"
        deploy.retire(ctx, outputs)
    assert running(bystander), "deploy's retire signalled a process that is not the endpoint's server"


def write_job(ws: Path, status: dict[str, Any]) -> Path:
    job_dir = ws / "jobs" / "job-reused"
    job_dir.mkdir(parents=True)
    (job_dir / "spec.json").write_text(json.dumps({"job_id": "job-reused", "command": ["true"]}))
    (job_dir / "status.json").write_text(json.dumps(status))
    (job_dir / "log.txt").write_text("")
    return job_dir


@pytest.mark.parametrize("variant", ["identities", "bare pid"])
def test_a_job_whose_pids_were_reused_has_ended(
    tmp_path: Path, bystander: subprocess.Popen[bytes], variant: str
) -> None:
    """Job.status, submit's re-attach and submit's retire: the job has ended, nothing is signalled."""
    from ftctl.backends.local.jobs import FAILED, Job
    from ftctl.backends.local.stages import submit

    ws = tmp_path / "ws"
    ctx = make_ctx(ws)
    start, cmdline = fakes(bystander.pid)
    status: dict[str, Any] = {"state": "running", "pid": bystander.pid, "spawned_at": time.time()}
    if variant == "identities":
        status.update(trainer=cmdline, supervisor=start)
    job_dir = write_job(ws, status)
    recorded = {"job_id": "job-reused", "job_dir": str(job_dir), "pid": bystander.pid}
    if variant == "identities":
        recorded["process"] = start
    job = Job(job_dir, supervisor=recorded.get("process"))
    assert job.status()["state"] == FAILED, "a job whose pid now runs something else is still 'running'"
    assert not job.running()
    submit.retire(ctx, recorded)
    job.stop(timeout_s=0.1)
    assert running(bystander), "a reused pid was signalled as a training job"


def test_submit_reattaching_to_a_reused_pid_does_not_follow_it_forever(
    tmp_path: Path, bystander: subprocess.Popen[bytes]
) -> None:
    """`ftctl submit` re-attaching to a job whose recorded pid now runs something else ends at once."""
    ws = tmp_path / "ws"
    start, cmdline = fakes(bystander.pid)
    status = {"state": "running", "pid": bystander.pid, "trainer": cmdline, "supervisor": start}
    job_dir = write_job(ws, {**status, "spawned_at": time.time()})
    done = {"status": "succeeded", "attempt": 1, "outputs": {"x": 1}, "fingerprint": None}
    state = {
        "schema_version": 1,
        "backend": "local",
        "run_id": "r",
        "stages": {
            "auth": done, "pick-model": done, "check-compute": done, "prepare-data": done,
            "submit": {"status": "running", "attempt": 1, "fingerprint": None,
                       "outputs": {"job_id": "job-reused", "job_dir": str(job_dir), "pid": bystander.pid}},
        },
    }  # fmt: skip
    (ws / "state.json").write_text(json.dumps(state))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "ftctl", "--workspace", str(ws), "submit"],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "job job-reused failed" in proc.stderr and "ended without recording" in proc.stderr, proc.stderr
    assert running(bystander)


def test_an_exiting_process_is_still_the_recorded_one(
    bystander: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a process exits, its command line reads empty (memory released) and its main thread may be a
    zombie while other threads still exit, but its files, such as a listening socket, are still open: it
    has not ended yet (teardown found its port still open)."""
    real = proc_identity(bystander.pid)
    monkeypatch.setattr(procs, "_cmdline", lambda pid: [])
    assert procs.alive(real)
    assert not procs.alive({**real, "start": real["start"] + 1})
    # Its main thread already a zombie while other threads still exit: not ended either.
    stat = procs._stat(bystander.pid)
    assert stat is not None
    monkeypatch.setattr(procs, "_stat", lambda pid: ["Z", *stat[1:]])
    monkeypatch.setattr(procs, "_other_threads", lambda pid: True)
    assert procs.alive(real)
    monkeypatch.setattr(procs, "_other_threads", lambda pid: False)
    assert not procs.alive(real)
