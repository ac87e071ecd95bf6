"""What runs is never forgotten: <workspace>/live records every training job and endpoint, separately
from the state file, so a damaged, reset or restored state file cannot orphan them; and a deploy that
is killed before its server is recorded leaves no key behind.

These are the library functions `ftctl reset` and `ftctl status` call (ftctl.backends.local.live),
tested on real processes: a job's supervisor with a stand-in trainer, and a stand-in endpoint server.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ftctl.backends.local import live, procs
from ftctl.backends.local.jobs import Job

SERVER = [sys.executable, "-c", "import time; time.sleep(300)", "-m", "ftctl.backends.local.server"]


def make_ctx(workspace: Path) -> Any:
    from ftctl.config import load_config
    from ftctl.context import Context
    from ftctl.ui import UI

    workspace.mkdir(parents=True, exist_ok=True)
    return Context(
        workspace=workspace, config=load_config(environ={}, backend="local"), ui=UI(err=io.StringIO())
    )


def wait_for(condition: Any, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


STARTED: list[subprocess.Popen[bytes]] = []  # stand-in processes, killed after each test


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Path]:
    workspace = tmp_path / "ws"
    (workspace / "secrets").mkdir(parents=True)
    yield workspace
    live.stop_live(workspace, timeout_s=2)
    while STARTED:
        proc = STARTED.pop()
        proc.kill()
        proc.wait()


def start_job(ws: Path) -> Job:
    command = [sys.executable, "-c", "import time; time.sleep(300)"]
    job = Job.create(ws / "jobs", {"job_id": "job-a", "command": command, "workspace": str(ws)})
    job.start()
    wait_for(lambda: job.status().get("trainer"), what="the trainer to be recorded")
    return job


def start_server(ws: Path, name: str = "ep-a") -> tuple[subprocess.Popen[bytes], Path]:
    proc = subprocess.Popen(SERVER, start_new_session=True)
    STARTED.append(proc)
    wait_for(
        lambda: procs.identity(proc.pid) and procs.identity(proc.pid)["cmdline"] == SERVER, what="the server"
    )
    key = ws / "secrets" / f"{name}.key"
    key.write_text("secret")
    details = {"url": "http://127.0.0.1:1", "port": 1, "host": "127.0.0.1", "key_file": str(key)}
    live.write(ws, live.ENDPOINT, name, {"server": procs.identity(proc.pid)}, **details)
    return proc, key


def test_live_resources_survive_a_damaged_state_file_and_stop_live_stops_them(ws: Path) -> None:
    job = start_job(ws)
    server, key = start_server(ws)
    (ws / "state.json").write_text("{ damaged")
    found = {(r.kind, r.name): r for r in live.live_resources(ws)}
    assert set(found) == {("job", "job-a"), ("endpoint", "ep-a")}
    assert all(r.alive for r in found.values())
    trainer = job.status()["trainer"]
    assert found["job", "job-a"].describe() == f"training job job-a (pid {trainer['pid']})"
    assert found["endpoint", "ep-a"].describe() == f"endpoint ep-a (pid {server.pid}, http://127.0.0.1:1)"
    assert {r.name for r in live.unrecorded(ws, {})} == {"job-a", "ep-a"}  # what a lost state forgot
    state = {
        "stages": {
            "submit": {"outputs": {"job_id": "job-a"}},
            "deploy": {"outputs": {"endpoint_name": "ep-a"}},
        }
    }
    assert live.unrecorded(ws, state) == []

    told: list[str] = []
    stopped = live.stop_live(ws, notify=told.append)
    assert {r.name for r in stopped} == {"job-a", "ep-a"}
    assert told == [
        f"stopping {found['job', 'job-a'].describe()}",
        f"stopping {found['endpoint', 'ep-a'].describe()}",
    ]
    assert server.wait(timeout=5) == -signal.SIGTERM
    assert not procs.alive(trainer)
    assert job.status()["error"] == "killed by SIGTERM"
    assert not key.exists()
    assert live.live_resources(ws, include_ended=True) == []


def test_reset_never_leaves_a_live_resource_that_ftctl_no_longer_knows(ws: Path) -> None:
    """`reset --restore-backup` to a state that does not record the running job and endpoint stops
    them (and says so); `reset --all` on a damaged state stops everything before starting over."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}

    def reset(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "ftctl", "--workspace", str(ws), "reset", *args]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done

    empty = json.dumps({"schema_version": 1, "backend": "local", "stages": {}})
    for args in (["--restore-backup"], ["--all"]):
        shutil.rmtree(ws / "jobs" / "job-a", ignore_errors=True)
        job = start_job(ws)
        server, key = start_server(ws)
        (ws / "state.json").write_text("{ damaged")
        (ws / "state.json.bak").write_text(empty)
        done = reset(*args)
        assert "stopping training job job-a" in done.stderr and "stopping endpoint ep-a" in done.stderr
        assert server.wait(timeout=10) == -signal.SIGTERM
        assert not job.running() and not key.exists()
        assert live.live_resources(ws) == []


def test_records_of_ended_resources_are_dropped_with_their_keys(ws: Path) -> None:
    server, key = start_server(ws, "ep-ended")
    server.kill()
    server.wait()
    _, live_key = start_server(ws, "ep-live")
    stray = ws / "secrets" / "killed-deploy.key"  # a deploy killed after writing it, by an older ftctl
    stray.write_text("x")
    assert [r.name for r in live.live_resources(ws)] == ["ep-live"]
    assert {r.name for r in live.live_resources(ws, include_ended=True)} == {"ep-ended", "ep-live"}
    assert [r.name for r in live.forget_ended(ws)] == ["ep-ended"]
    assert not key.exists() and live_key.exists()
    assert live.orphan_keys(ws) == [stray]
    live.remove_orphan_keys(ws)
    assert not stray.exists() and live_key.exists()


def test_stop_live_never_signals_a_reused_pid_nor_deletes_outside_secrets(ws: Path, tmp_path: Path) -> None:
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    STARTED.append(bystander)
    wait_for(lambda: procs.identity(bystander.pid), what="sleep")
    ident = procs.identity(bystander.pid)
    assert ident is not None
    outside = tmp_path / "precious.key"
    outside.write_text("keep me")
    live.write(
        ws, live.ENDPOINT, "ep-old", {"server": {**ident, "start": ident["start"] + 7}}, key_file=str(outside)
    )
    assert live.live_resources(ws) == []
    assert live.stop_live(ws) == []
    time.sleep(0.2)
    assert bystander.poll() is None and outside.exists()
    assert live.live_resources(ws, include_ended=True) == []
