"""A killed training job resumes from its last complete checkpoint (issue 20).

The trainer is killed with SIGKILL at a random step of the fast profile (8 steps, a checkpoint every 2);
the newest checkpoint it left is then damaged (a file cut short) and a newer, partial one planted, so the
resumed run must pass over both. `ftctl run` then resumes the same job: one trainer at a time, the
right step count, and the held-out loss of the uninterrupted run (trained_ws, the same profile) to 1e-4.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from ftctl.backends.local import checkpoints
from harness import Ftctl


def _trainers(job_dir: Path) -> list[int]:
    """The live trainer processes of the job (by their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (
            state not in ("Z", "X")
            and b"ftctl.backends.local.trainer" in argv
            and str(job_dir).encode() in argv
        ):
            found.append(int(entry.name))
    return found


def _progress_step(job_dir: Path) -> int:
    steps = [0]
    with (job_dir / "events.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            if event.get("type") == "progress":
                steps.append(int(event["step"]))
    return max(steps)


def test_killed_trainer_resumes_with_the_uninterrupted_loss(
    prepared_ws: Ftctl, trained_ws: Ftctl, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FTCTL_TEST_SEED") or time.time())
    kill_at = random.Random(seed).randint(3, 7)
    where = f"(seed {seed}: killed after step {kill_at})"
    ws = prepared_ws.copy(tmp_path / "ws")
    ws("submit", "--no-wait")
    job_dir = Path(ws.outputs("submit")["job_dir"])
    deadline = time.monotonic() + 300
    while not (job_dir / "events.jsonl").exists() or _progress_step(job_dir) < kill_at:
        assert time.monotonic() < deadline, f"the job did not reach step {kill_at} {where}"
        time.sleep(0.05)
    status = json.loads((job_dir / "status.json").read_text())
    first = int(status["trainer"]["pid"])
    os.kill(first, signal.SIGKILL)
    while json.loads((job_dir / "status.json").read_text()).get("state") != "failed":
        assert time.monotonic() < deadline, where
        time.sleep(0.05)

    # The newest complete checkpoint damaged, a partial newer one planted: resuming passes over both.
    root = job_dir / "checkpoints"
    found = checkpoints.complete(root)
    assert found, f"no checkpoint was sealed before the kill {where}"
    expected = found[-1].step
    if len(found) >= 2:
        with (found[-1].path / "optimizer.pt").open("r+b") as handle:
            handle.truncate(100)
        expected = found[-2].step
    partial = root / f"checkpoint-{found[-1].step + 2}"
    partial.mkdir(exist_ok=True)
    (partial / "optimizer.pt").write_bytes(b"cut short")

    seen: set[int] = set()
    most = [0]
    done = threading.Event()

    def watch() -> None:  # every trainer process of the job while `ftctl run` runs
        while not done.is_set():
            live = _trainers(job_dir)
            seen.update(live)
            most[0] = max(most[0], len(live))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = ws("run", "--to", "submit").stderr
    finally:
        done.set()
        watcher.join()
    assert f"resumed from step {expected} of 8" in out, f"{where}\n{out}"
    assert most[0] == 1 and first not in seen, f"trainers seen: {seen} (most at once {most[0]}) {where}"
    outputs = ws.outputs("submit")
    assert outputs["job_id"] == job_dir.name  # the same job, resumed: no second job
    assert outputs["steps"] == 8
    reference = trained_ws.outputs("submit")["eval_loss"]
    assert abs(outputs["eval_loss"] - reference) <= 1e-4, f"{outputs['eval_loss']} vs {reference} {where}"
    assert json.loads((job_dir / "status.json").read_text())["attempts"] == 2
    assert "passed over checkpoint" in (job_dir / "log.txt").read_text()


def _failed_job_with_a_checkpoint(ws: Ftctl) -> Path:
    """A submit attempt recorded as failed, whose job left a sealed checkpoint (made by hand)."""
    job_dir = ws.workspace / "jobs" / "job-20260101-000000-dead"
    folder = job_dir / "checkpoints" / "checkpoint-2"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    checkpoints.write_manifest(folder, 2, 8, 3.9, None)
    (job_dir / "spec.json").write_text(json.dumps({"job_id": job_dir.name, "resume_key": "another"}))
    (job_dir / "status.json").write_text(
        json.dumps({"state": "failed", "signal": "SIGKILL", "error": "killed"})
    )
    state = ws.state()
    state["stages"]["submit"].update(
        status="failed",
        attempt=1,
        started_at="2026-01-01T00:00:00+00:00",
        ended_at="2026-01-01T00:01:00+00:00",
        outputs={"job_id": job_dir.name, "job_dir": str(job_dir)},
        error={"type": "StageFailed", "message": "killed"},
    )
    (ws.workspace / "state.json").write_text(json.dumps(state))
    return job_dir


@pytest.mark.integration
@pytest.mark.parametrize("restart", [True, False])
def test_restart_or_changed_settings_start_a_new_job(
    prepared_ws: Ftctl, tmp_path: Path, restart: bool
) -> None:
    ws = prepared_ws.copy(tmp_path / "ws")
    old = _failed_job_with_a_checkpoint(ws)
    out = ws("submit", "--no-wait", "--no-plan", *(["--restart"] if restart else [])).stderr
    try:
        new = ws.outputs("submit")["job_id"]
        assert new != old.name  # a new job, from step 0
        if restart:
            assert f"starting over (--restart): the checkpoints of job {old.name} are deleted" in out
            assert checkpoints.folders(old / "checkpoints") == []
        else:  # the failed job was another model, data or parameters (its resume key differs)
            assert (
                f"job {old.name} has a checkpoint, but the model, data or parameters changed: a new job"
                in out
            )
            assert [c.step for c in checkpoints.complete(old / "checkpoints")] == [2]
        assert "resuming" not in out
    finally:
        ws("reset", "submit", code=None)  # stops the new job's trainer


@pytest.mark.integration
def test_a_failed_job_whose_supervisor_is_still_exiting_is_waited_for(
    prepared_ws: Ftctl, tmp_path: Path
) -> None:
    """The supervisor records "failed" as its last act and exits a moment later. `ftctl submit` in that
    moment (CI once caught `ftctl run` there) re-attaches to the attempt, sees the job recorded failed,
    and waits for the supervisor before deciding on the checkpoint; it used to take the job for running
    and report its failure without looking at the checkpoint."""
    import subprocess

    from ftctl.backends.local import procs

    ws = prepared_ws.copy(tmp_path / "ws")
    old = _failed_job_with_a_checkpoint(ws)
    exiting = subprocess.Popen(["sleep", "3"])  # the supervisor, on its way out (the wait is up to 5 s)
    try:
        status = json.loads((old / "status.json").read_text())
        status["supervisor"] = procs.started_identity(exiting.pid, exiting)
        (old / "status.json").write_text(json.dumps(status))
        state = ws.state()  # the attempt that started the job is still recorded as running
        state["stages"]["submit"].update(status="running", ended_at=None, error=None)
        (ws.workspace / "state.json").write_text(json.dumps(state))
        out = ws("submit", code=None).stderr
        assert "re-attaching" in out, out
        # it waited, then decided on the checkpoint (another resume key: not this job's to resume)
        assert f"job {old.name} has a checkpoint, but the model, data or parameters changed" in out, out
    finally:
        exiting.kill()
        exiting.wait()
        ws("reset", "submit", code=None)
