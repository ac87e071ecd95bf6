"""The training job is the trainer: whatever process is killed, ftctl says what happened and never runs
two trainers.

Jobs here run through the real supervisor (`python -m ftctl.backends.local.jobs`) with a stand-in
trainer (a few lines of Python) where the training itself does not matter; the divergence case runs
the real trainer on the shipped tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ftctl.backends.local.jobs import Job

# A stand-in trainer: records its pid, prints a misleading log line and a traceback, then runs `ACTION`.
TRAINER = r"""
import json, os, sys, time
open("trainer.pid", "w").write(str(os.getpid()))
print("warning: an Error-looking line the trainer printed long before it died", flush=True)
action = sys.argv[1]
if action == "fail":
    with open("events.jsonl", "a") as fh:
        fh.write(json.dumps({"type": "error", "message": "CUDA out of memory.\nTried to allocate 2 GiB",
                             "error_type": "OutOfMemoryError"}) + "\n")
    print("Traceback (most recent call last):\n  File \"x.py\", line 1", file=sys.stderr)
    print("OutOfMemoryError: CUDA out of memory.", file=sys.stderr, flush=True)
    sys.exit(1)
time.sleep(float(action))
"""


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}, "HF_HUB_OFFLINE": "1"}


def ftctl(ws: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftctl", "--workspace", str(ws), *args],
        capture_output=True, text=True, timeout=timeout, env=env(), cwd=ws.parent,
    )  # fmt: skip


def start_job(ws: Path, action: str, job_id: str = "job-test") -> tuple[Job, int]:
    """A job (supervisor + stand-in trainer) in workspace `ws`; returns it and its trainer's pid."""
    spec = {"job_id": job_id, "command": [sys.executable, "-c", TRAINER, action], "workspace": str(ws)}
    job = Job.create(ws / "jobs", spec)
    job.start()
    pid_file = job.dir / "trainer.pid"
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, procs_log(job)
        time.sleep(0.05)
    while json.loads(job.status_path.read_text()).get("state") == "queued":  # recorded by now
        assert time.monotonic() < deadline, procs_log(job)
        time.sleep(0.05)
    return job, int(pid_file.read_text())


def procs_log(job: Job) -> str:
    return job.log_path.read_text() if job.log_path.exists() else "(no log)"


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


def follow(job: Job, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = job.status()
        if status.get("state") in ("completed", "failed"):
            return status
        assert time.monotonic() < deadline, f"the job did not end\n{procs_log(job)}"
        time.sleep(0.1)


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Path]:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    yield workspace
    for pid_file in workspace.glob("jobs/*/trainer.pid"):  # whatever a failed assertion left running
        with_pid = int(pid_file.read_text() or 0)
        if with_pid and not gone(with_pid):
            os.kill(with_pid, signal.SIGKILL)


def upstream_state(ws: Path, submit: dict[str, Any] | None) -> dict[str, Any]:
    """A state where everything before submit succeeded, with outputs a real submit can start from."""
    from ftctl.models.layout import shipped_model_dir

    data = ws / "data"
    data.mkdir(exist_ok=True)
    line = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    )
    (data / "train_sft.jsonl").write_text(line + "\n")

    def done(outputs: dict[str, Any]) -> dict[str, Any]:
        return {"status": "succeeded", "attempt": 1, "fingerprint": None, "outputs": outputs, "error": None}

    stages = {
        "auth": done({"workspace": str(ws)}),
        "pick-model": done({"name": "tiny", "path": str(shipped_model_dir())}),
        "check-compute": done({"device": "cpu", "gpus_per_node": 0, "precision": "32", "size": "cpu"}),
        "prepare-data": done({"files": {"train_sft": {"path": str(data / "train_sft.jsonl"), "rows": 1}}}),
    }
    if submit is not None:
        stages["submit"] = submit
    state = {"schema_version": 1, "backend": "local", "run_id": "r", "stages": stages}
    (ws / "state.json").write_text(json.dumps(state))
    return state


def reattaching(job: Job) -> dict[str, Any]:
    outputs = {"job_id": job.id, "job_dir": str(job.dir), "display_name": "x"}
    return {"status": "running", "attempt": 1, "fingerprint": None, "outputs": outputs, "error": None}


# --- whatever is killed ------------------------------------------------------------------------------


def test_a_killed_trainer_is_reported_with_its_signal(ws: Path) -> None:
    job, trainer = start_job(ws, "120")
    os.kill(trainer, signal.SIGKILL)
    final = follow(job)
    assert final["state"] == "failed"
    assert final["error"] == "killed by SIGKILL", f"not the signal, but: {final['error']!r}"
    from ftctl.backends.local.jobs import describe_failure

    assert describe_failure(job, final) == f"job {job.id} was killed by SIGKILL (log: {job.log_path})"


def test_killing_the_supervisor_takes_the_trainer_with_it(ws: Path) -> None:
    """Killing the job's supervisor leaves no trainer running that the job no longer accounts for."""
    job, trainer = start_job(ws, "120")
    status = json.loads(job.status_path.read_text())
    supervisor = status["supervisor"]["pid"] if isinstance(status.get("supervisor"), dict) else status["pid"]
    assert supervisor != trainer
    os.kill(supervisor, signal.SIGKILL)
    final = follow(job)
    assert final["state"] == "failed"
    assert wait_gone(trainer, 5), (
        "the trainer runs on while its job reads failed: a re-run would start a second"
    )


def test_a_job_that_reads_running_has_a_live_trainer_whoever_was_killed(ws: Path) -> None:
    """The follower (ftctl) killed: the job keeps running, and reads running while its trainer lives."""
    job, trainer = start_job(ws, "120")
    time.sleep(0.3)
    assert job.status()["state"] == "running" and not gone(trainer)
    job.stop(timeout_s=5)
    assert wait_gone(trainer, 5)
    assert follow(job)["error"] == "killed by SIGTERM"


def test_a_second_submit_never_starts_a_second_trainer(ws: Path) -> None:
    """The state forgot the running job (reset, restored backup): `ftctl submit` must not start another."""
    job, trainer = start_job(ws, "120", job_id="job-first")
    upstream_state(ws, submit=None)  # submit pending: the state no longer records job-first
    done = ftctl(ws, "submit", "--no-wait")
    try:
        started = sorted(p.name for p in (ws / "jobs").iterdir())
        assert started == ["job-first"], f"a second job started while job-first trains: {started}"
        assert done.returncode == 1, done.stderr
        assert "training job job-first" in done.stderr and "still running" in done.stderr, done.stderr
        assert not gone(trainer)
    finally:
        for other in (ws / "jobs").iterdir():
            if other.name != "job-first":
                Job(other).stop(timeout_s=2)
                for pid in [*other.glob("*.pid")]:
                    os.kill(int(pid.read_text()), signal.SIGKILL)
        job.stop(timeout_s=5)


# --- how a failure reads -----------------------------------------------------------------------------


def test_a_failed_job_is_one_line_with_its_cause_and_log(ws: Path) -> None:
    job, _ = start_job(ws, "fail")
    final = follow(job)
    assert final["state"] == "failed"
    upstream_state(ws, submit=reattaching(job))
    done = ftctl(ws, "submit")
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: job {job.id} failed: OutOfMemoryError: CUDA out of memory. (log: {job.log_path})"
    ], done.stderr
    assert "Traceback" not in done.stderr and "Error-looking" not in done.stderr, done.stderr
    assert "Traceback" in job.log_path.read_text()  # it stays in the log


@pytest.mark.integration  # the real trainer
def test_a_diverging_run_fails_submit_and_registers_nothing(ws: Path) -> None:
    """The real trainer, a learning rate that blows the loss up: the job fails as 'training diverged'."""
    from ftctl.backends.local.launch import launch_command
    from ftctl.models.layout import shipped_model_dir

    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    train = ws / "train.jsonl"
    train.write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": f"Say {w}"},
                                 {"role": "assistant", "content": f"{w} {words[(i * 3) % 10]} {w}."}]}) + "\n"
        for i, w in enumerate(words)
    ))  # fmt: skip
    job_dir = ws / "jobs" / "job-diverge"
    spec = {
        "job_id": job_dir.name,
        "model_path": str(shipped_model_dir()),
        "train_file": str(train),
        "device": "cpu",
        "params": {"max_steps": 30, "learning_rate": 1.0, "logging_steps": 1, "max_seq_length": 64,
                   "per_device_train_batch_size": 2, "lr_scheduler_type": "constant"},
        "command": launch_command(job_dir, num_gpus=0, apply_deepspeed=False),
        "workspace": str(ws),
    }  # fmt: skip
    job = Job.create(ws / "jobs", spec)
    job.start()
    final = follow(job, timeout=240)
    assert final["state"] == "failed", procs_log(job)
    assert final["error"].startswith("training diverged: loss is nan at step"), final["error"]
    assert not job.result_path.exists() and not (job.dir / "outputs" / "mlflow_model").exists()

    upstream_state(ws, submit=reattaching(job))
    done = ftctl(ws, "submit")
    assert done.returncode == 1 and f"job {job.id} failed: training diverged" in done.stderr, done.stderr
    register = ftctl(ws, "register")
    assert register.returncode == 2 and "register needs submit, which is failed" in register.stderr
    assert not (ws / "mlflow.db").exists()
