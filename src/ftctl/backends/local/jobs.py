"""Local training jobs: a detached process with its own id, folder, log, events and status.

jobs/<job_id>/
  spec.json      what to run (written by `ftctl submit`)
  status.json    queued -> running -> completed | failed (written by the job wrapper)
  log.txt        everything the job printed
  events.jsonl   progress events from the trainer (one JSON object per line)
  result.json    the trainer's final metrics and output paths
  outputs/       the trained model (hf_model/, mlflow_model/)

`python -m ftctl.backends.local.jobs JOB_DIR` is the wrapper: it runs the spec's command (one process,
or accelerate for several GPUs), waits, and records the outcome, so the status is right even when the
`ftctl` that started the job is gone.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftctl.backends.local import procs
from ftctl.state import atomic_write_text, now_iso

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
TERMINAL = (COMPLETED, FAILED)
SPAWN_GRACE_S = 120.0  # a spawned job that has not reported its pid after this long did not start


def new_job_id() -> str:
    return datetime.now(timezone.utc).strftime("job-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Job:
    def __init__(self, job_dir: Path) -> None:
        self.dir = Path(job_dir)
        self.id = self.dir.name

    spec_path = property(lambda self: self.dir / "spec.json")
    status_path = property(lambda self: self.dir / "status.json")
    log_path = property(lambda self: self.dir / "log.txt")
    events_path = property(lambda self: self.dir / "events.jsonl")
    result_path = property(lambda self: self.dir / "result.json")

    @classmethod
    def create(cls, jobs_dir: Path, spec: dict[str, Any]) -> Job:
        job_id = spec.get("job_id") or new_job_id()
        job = cls(jobs_dir / job_id)
        job.dir.mkdir(parents=True)
        atomic_write_text(job.spec_path, json.dumps({**spec, "job_id": job_id}, indent=2))
        job.write_status(QUEUED)
        return job

    def spec(self) -> dict[str, Any]:
        return _read_json(self.spec_path)

    def write_status(self, state: str, **fields: Any) -> None:
        data = {**_read_json(self.status_path), **fields, "state": state, "updated_at": now_iso()}
        atomic_write_text(self.status_path, json.dumps(data, indent=2))

    def status(self) -> dict[str, Any]:
        """The recorded status, corrected to failed when the job's process is gone without a word."""
        data = _read_json(self.status_path)
        state = data.get("state")
        if state in (QUEUED, RUNNING):
            pid = data.get("pid")
            if pid and not procs.alive(pid):
                data = {**data, "state": FAILED, "error": "the job process ended without recording a result"}
            elif not pid and data.get("spawned_at") and time.time() - data["spawned_at"] > SPAWN_GRACE_S:
                # Spawned by an ftctl that was killed before recording the pid, and the job never
                # reported in itself: it did not start.
                data = {**data, "state": FAILED, "error": "the job process did not start"}
        return data

    def never_started(self) -> bool:
        """Created (and recorded) but not spawned: the ftctl starting it was interrupted before."""
        data = _read_json(self.status_path)
        return data.get("state") == QUEUED and not data.get("spawned_at") and not data.get("pid")

    def start(self) -> int:
        """Spawn the wrapper, detached; returns its pid."""
        self.write_status(QUEUED, spawned_at=time.time())
        pid = procs.spawn(procs.python_command("ftctl.backends.local.jobs", str(self.dir)), self.log_path)
        self.write_status(QUEUED, pid=pid)
        return pid

    def read_events(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Complete event lines after byte `offset`, and the new offset."""
        try:
            with open(self.events_path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            return [], offset
        end = chunk.rfind(b"\n") + 1
        events = []
        for line in chunk[:end].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events, offset + end

    def follow(
        self, on_event: Callable[[dict[str, Any]], None], poll_s: float = 0.25, offset: int = 0
    ) -> dict[str, Any]:
        """Stream events until the job ends; returns its final status."""
        while True:
            status = self.status()
            events, offset = self.read_events(offset)
            for event in events:
                on_event(event)
            if status.get("state") in TERMINAL:
                events, offset = self.read_events(offset)
                for event in events:
                    on_event(event)
                return status
            time.sleep(poll_s)

    def result(self) -> dict[str, Any]:
        return _read_json(self.result_path)


def _failure_reason(job: Job, code: int) -> str:
    """The trainer's own error event if it wrote one, else the log's last error-looking line."""
    events, _ = job.read_events(0)
    errors = [e for e in events if e.get("type") == "error"]
    if errors:
        return f"{errors[-1].get('error_type', 'Error')}: {errors[-1].get('message')}"
    lines = [line.strip() for line in procs.tail(job.log_path, 40).splitlines() if line.strip()]
    found = next((line for line in reversed(lines) if "rror" in line), None)
    return found or (lines[-1] if lines else f"the job exited with code {code}")


def _wrapper(job_dir: Path) -> int:
    job = Job(job_dir)
    command = job.spec().get("command")
    if not command:
        job.write_status(FAILED, error="spec.json has no command", ended_at=now_iso())
        return 2
    job.write_status(RUNNING, pid=os.getpid(), started_at=now_iso(), command=command)
    print(f"[ftctl job {job.id}] {' '.join(command)}", flush=True)
    child = subprocess.Popen(command, cwd=job.dir)

    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    if code == 0 and job.result_path.exists():
        job.write_status(COMPLETED, exit_code=0, ended_at=now_iso())
        return 0
    job.write_status(FAILED, exit_code=code, error=_failure_reason(job, code), ended_at=now_iso())
    return 1


if __name__ == "__main__":
    sys.exit(_wrapper(Path(sys.argv[1])))
