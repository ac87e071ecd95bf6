"""`ftctl logs` on the local backend: the submit job's log.txt, --follow until the job ends, --json.

The job folder and the state are written by hand (a job is a folder with spec.json, status.json and
log.txt), so no training runs; --follow's waits are where the "job" writes its next lines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ftctl import state as st
from ftctl.backends.local import hooks, procs
from ftctl.backends.local.jobs import Job
from ftctl.state import StateStore

KEYS = {"backend", "job", "job_status", "step", "step_status", "steps", "source", "lines"}  # as on Azure ML


def _job(ftctl: Any, log: str, state: str = "completed") -> Job:
    """A submitted job in the workspace: its folder, and submit's record pointing at it."""
    job = Job.create(ftctl.workspace / "jobs", {"display_name": "tiny-ultrachat", "command": ["true"]})
    job.log_path.write_text(log)
    # This process stands in for the trainer: alive (identity-checked) while the test runs.
    job.write_status(state, pid=os.getpid(), trainer=procs.identity(os.getpid()))
    store = StateStore(ftctl.workspace)
    data = store.load()
    data["backend"] = "local"
    rec = st.record(data, "submit")
    rec.update(
        status=st.SUCCEEDED if state == "completed" else st.RUNNING,
        attempt=1,
        outputs={"job_id": job.id, "job_dir": str(job.dir), "display_name": "tiny-ultrachat"},
    )
    store.save(data)
    return job


def test_logs_prints_the_jobs_log(ftctl) -> None:
    job = _job(ftctl, "[ftctl job] python -m trainer\nloading the model\nstep 1 loss 2.5\n")
    result = ftctl("logs")
    lines = ["[ftctl job] python -m trainer", "loading the model", "step 1 loss 2.5"]
    assert result.stdout.splitlines() == lines
    assert f"job {job.id}: completed; step finetune: completed; 3 lines from {job.log_path}" in result.stderr


def test_logs_json_has_the_same_keys_as_on_azure_ml(ftctl) -> None:
    job = _job(ftctl, "one\ntwo without a newline")
    data = ftctl.json("logs")
    assert set(data) == KEYS
    assert data == {
        "backend": "local",
        "job": job.id,
        "job_status": "completed",
        "step": "finetune",
        "step_status": "completed",
        "steps": [{"name": "finetune", "status": "completed"}],
        "source": str(job.log_path),
        "lines": ["one", "two without a newline"],
    }


def test_an_unknown_step_is_exit_2_listing_the_steps(ftctl) -> None:
    _job(ftctl, "x\n")
    result = ftctl("logs", "--step", "chat_completion_finetune", code=2)
    message = "--step chat_completion_finetune: the local job has no such step; its steps: finetune"
    assert message in result.stderr
    assert ftctl("logs", "--step", "finetune").stdout == "x\n"


def test_logs_without_a_job_says_what_to_run(ftctl) -> None:
    result = ftctl("logs", code=2)
    assert "no fine-tuning job to show: submit has not run" in result.stderr
    assert "`ftctl submit`" in result.stderr


def test_a_failed_jobs_log(ftctl) -> None:
    job = _job(ftctl, "step 1\nTraceback (most recent call last):\nValueError: bad batch\n", state="failed")
    result = ftctl("logs")
    assert result.stdout.splitlines()[-1] == "ValueError: bad batch"
    assert f"job {job.id}: failed" in result.stderr


def test_follow_shows_new_lines_until_the_job_ends(ftctl, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(ftctl, "starting\n", state="running")
    # What the job writes while `ftctl logs --follow` waits: a line in two pieces, then it ends.
    writes = iter(["step 1 lo", "ss 2.5\nstep 2 loss 2.1\n", "done\n", None])

    def next_write(seconds: float) -> None:
        text = next(writes)
        if text is None:
            job.write_status("completed")
            return
        with open(job.log_path, "a") as handle:
            handle.write(text)

    monkeypatch.setattr(hooks.time, "sleep", next_write)
    result = ftctl("logs", "--follow")
    assert result.stdout.splitlines() == ["starting", "step 1 loss 2.5", "step 2 loss 2.1", "done"]
    assert "step finetune: completed; 4 lines" in result.stderr


def test_follow_waits_for_a_log_not_written_yet(ftctl, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job(ftctl, "", state="queued")
    job.log_path.unlink()

    def write_and_end(seconds: float) -> None:
        Path(job.log_path).write_text("hello\n")
        job.write_status("completed")

    monkeypatch.setattr(hooks.time, "sleep", write_and_end)
    data = json.loads(ftctl("--json", "logs", "--follow").stdout)
    assert data["lines"] == ["hello"] and data["job_status"] == "completed"


def test_ctrl_c_stops_following_with_130(ftctl, monkeypatch: pytest.MonkeyPatch) -> None:
    _job(ftctl, "starting\n", state="running")

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(hooks.time, "sleep", interrupt)
    result = ftctl("logs", "--follow", code=130)
    assert result.stdout == "starting\n"
    assert "stopped after 1 line; the job keeps running" in result.stderr
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
