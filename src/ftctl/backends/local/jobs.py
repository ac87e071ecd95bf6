"""Local training jobs: a detached process with its own id, folder, log, events and status.

jobs/<job_id>/
  spec.json      what to run (written by `ftctl submit`)
  status.json    queued -> running -> completed | failed (written by the job's supervisor)
  log.txt        everything the job printed
  events.jsonl   progress events from the trainer (one JSON object per line)
  result.json    the trainer's final metrics and output paths
  outputs/       the trained model (hf_model/, mlflow_model/)

`ftctl submit` starts `python -m ftctl.backends.local.jobs JOB_DIR`, the job's *supervisor*: it starts
the *trainer* (the spec's command: one process, or torchrun for several GPUs) as its child, records the
trainer's identity (pid, start time, command line) in status.json and in <workspace>/live, waits, and
records the outcome, so the status is right even when the `ftctl` that started the job is gone.

The job is the trainer: the job runs while the trainer runs, and its outcome is the trainer's. Whatever
process is killed, there is never a trainer that ftctl has lost track of:
  - the `ftctl` following it: the job goes on; the next `ftctl submit` re-attaches to it;
  - the trainer: the supervisor records "killed by SIGKILL" (the signal, never a guess from the log);
  - the supervisor: the kernel stops the trainer with it (PR_SET_PDEATHSIG), and the job reads failed.
A failure's cause is one line (the trainer's own error, or the signal); tracebacks stay in log.txt.
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

from ftctl.backends.local import live, procs
from ftctl.state import atomic_write_text, now_iso

QUEUED, RUNNING, COMPLETED, FAILED = "queued", "running", "completed", "failed"
TERMINAL = (COMPLETED, FAILED)
SPAWN_GRACE_S = 120.0  # a spawned job that has not reported in after this long did not start
SUPERVISOR_MODULE = "ftctl.backends.local.jobs"
PR_SET_PDEATHSIG = 1


def new_job_id() -> str:
    return datetime.now(timezone.utc).strftime("job-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _one_line(text: Any, limit: int = 300) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


class Job:
    def __init__(self, job_dir: Path, supervisor: procs.Identity | None = None) -> None:
        """`supervisor`: the identity `ftctl submit` recorded when it spawned the job (if any)."""
        self.dir = Path(job_dir)
        self.id = self.dir.name
        self.supervisor = supervisor if procs.is_identity(supervisor) else None

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

    def workspace(self) -> Path:
        """The ftctl workspace the job belongs to (where its live record goes)."""
        return Path(self.spec().get("workspace") or self.dir.parent.parent)

    def write_status(self, state: str, **fields: Any) -> None:
        data = {**_read_json(self.status_path), **fields, "state": state, "updated_at": now_iso()}
        atomic_write_text(self.status_path, json.dumps(data, indent=2))

    def processes(self, data: dict[str, Any] | None = None) -> dict[str, procs.Identity]:
        """The job's recorded processes (trainer, supervisor), identities only."""
        data = _read_json(self.status_path) if data is None else data
        found = {role: data[role] for role in ("trainer", "supervisor") if procs.is_identity(data.get(role))}
        if "supervisor" not in found and self.supervisor is not None:
            found["supervisor"] = self.supervisor
        if not found and isinstance(data.get("pid"), int):
            # Written by an ftctl that recorded bare pids: trusted only if it still runs this job.
            legacy = procs.legacy_identity(data["pid"], SUPERVISOR_MODULE, str(self.dir))
            if legacy is not None:
                found["supervisor"] = legacy
        return found

    def running(self) -> bool:
        """Whether a process of the job (trainer or supervisor, identity-checked) still runs."""
        return any(procs.alive(ident) for ident in self.processes().values())

    def status(self) -> dict[str, Any]:
        """The recorded status, corrected to failed when no process of the job runs any more and none
        recorded the end (a pid now carrying another process counts as ended)."""
        data = _read_json(self.status_path)
        if data.get("state") not in (QUEUED, RUNNING):
            return data
        found = self.processes(data)
        if any(procs.alive(ident) for ident in found.values()):
            return data
        again = _read_json(self.status_path)  # the supervisor may have recorded the end just now
        if again.get("state") in TERMINAL:
            return again
        if found:
            return {**data, **self._ended_unrecorded(data)}
        spawned = self._spawned_child()
        if spawned is not None and spawned.poll() is not None:
            return {**data, "state": FAILED, "error": f"the job's supervisor exited with code "
                    f"{spawned.returncode} before starting the trainer"}  # fmt: skip
        if data.get("pid"):
            return {**data, "state": FAILED, "error": "the job process ended without recording a result"}
        if data.get("spawned_at") and time.time() - data["spawned_at"] > SPAWN_GRACE_S:
            # Spawned by an ftctl that was killed before the job reported in, and it never did.
            return {**data, "state": FAILED, "error": "the job process did not start"}
        return data

    def _spawned_child(self) -> procs.Child | None:
        return procs.handle(self.supervisor["pid"]) if self.supervisor else None

    def _ended_unrecorded(self, data: dict[str, Any]) -> dict[str, Any]:
        """The outcome of a job whose processes all ended without recording it."""
        if self.result_path.exists():  # the trainer finished; its supervisor went before recording it
            return {"state": COMPLETED}
        cause = trainer_error(self)
        if cause:
            return {"state": FAILED, "error": cause}
        found = self.processes(data)
        supervisor, trainer = found.get("supervisor"), found.get("trainer")
        if supervisor is not None:
            ended = f"its supervisor ({procs.describe(supervisor)}) ended without recording the outcome"
            if trainer is not None:
                ended += f", and the trainer ({procs.describe(trainer)}) with it"
        else:
            ended = f"the trainer ({procs.describe(trainer)}) ended without recording the outcome"
        return {"state": FAILED, "error": f"{ended} (killed, or the machine restarted)"}

    def never_started(self) -> bool:
        """Created (and recorded) but not spawned: the ftctl starting it was interrupted before."""
        data = _read_json(self.status_path)
        return (
            data.get("state") == QUEUED
            and not data.get("spawned_at")
            and not data.get("pid")
            and not data.get("supervisor")
        )

    def start(self) -> procs.Identity:
        """Spawn the job's supervisor, detached; returns its identity."""
        self.write_status(QUEUED, spawned_at=time.time())
        pid = procs.spawn(procs.python_command(SUPERVISOR_MODULE, str(self.dir)), self.log_path)
        ident = procs.started_identity(pid) or {"pid": pid}  # gone already: the status says why
        self.supervisor = ident if procs.is_identity(ident) else None
        return ident

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the job's processes (identity-checked; a reused pid is never signalled)."""
        found = self.processes()
        stopped = False
        for role in ("trainer", "supervisor"):
            if role in found:
                stopped = procs.stop(found[role], timeout_s=timeout_s) or stopped
        return stopped

    def reopen(self, event: dict[str, Any]) -> int:
        """Make a failed job startable again (its trainer resumes from its checkpoint): a fresh status,
        the attempts counted, and `event` appended to its events to mark where this attempt begins (an
        earlier attempt's error is not this one's). Returns the events' offset before the marker."""
        previous = _read_json(self.status_path)
        attempts = int(previous.get("attempts") or 1) + 1
        atomic_write_text(
            self.status_path,
            json.dumps({"state": QUEUED, "attempts": attempts, "updated_at": now_iso()}, indent=2),
        )
        try:
            offset = self.events_path.stat().st_size
        except FileNotFoundError:
            offset = 0
        with self.events_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **event, "attempt": attempts}) + "\n")
        return offset

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


def describe_failure(job: Job, status: dict[str, Any]) -> str:
    """One line: 'job X was killed by SIGKILL (log: ...)' / 'job X failed: <cause> (log: ...)'."""
    if status.get("signal"):
        what = f"was killed by {status['signal']}"
    else:
        what = f"failed: {_one_line(status.get('error')) or 'unknown error'}"
    return f"job {job.id} {what} (log: {job.log_path})"


def _last_error(job: Job) -> dict[str, Any] | None:
    """The trainer's last "error" event in the job's latest attempt (after the last resume marker)."""
    events, _ = job.read_events(0)
    last = None
    for event in events:
        if event.get("type") == "resume_requested":
            last = None
        elif event.get("type") == "error":
            last = event
    return last


def trainer_error_type(job: Job) -> str | None:
    """The type of the error the trainer reported in the job's latest attempt (None without one)."""
    last = _last_error(job)
    return str(last.get("error_type")) if last is not None else None


def trainer_error(job: Job) -> str | None:
    """The cause the trainer itself reported (its last "error" event), in one line."""
    last = _last_error(job)
    if last is None:
        return None
    message = _one_line(last.get("message")) or str(last.get("error_type") or "error")
    if last.get("expected"):  # an ftctl error: its message says it all
        return message
    return f"{last.get('error_type', 'Error')}: {message}"


def _outcome(job: Job, code: int) -> dict[str, Any]:
    """The trainer's outcome from its exit status: completed, killed by a signal, or its own error."""
    if code == 0 and job.result_path.exists():
        return {"state": COMPLETED}
    sig = procs.signal_name(code)
    if sig:
        return {"state": FAILED, "signal": sig, "error": f"killed by {sig}"}
    cause = trainer_error(job)
    if cause:
        return {"state": FAILED, "error": cause}
    if code == 0:
        return {"state": FAILED, "error": "the trainer exited without writing its result"}
    return {"state": FAILED, "error": f"the trainer exited with code {code}"}


def _die_with(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when `parent` dies (and exits at once if it already has)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def _supervise(job_dir: Path) -> int:
    """The supervisor: start the trainer, record it, wait, record how it ended."""
    from ftctl.backends.local import warm  # here: `ftctl status` reads jobs, and needs none of it

    job = Job(job_dir)
    workspace = job.workspace()
    me = procs.identity(os.getpid())
    command = job.spec().get("command")
    if not command:
        job.write_status(FAILED, error="spec.json has no command", ended_at=now_iso())
        return 2
    child: procs.Child | None = None
    requested: list[int] = []

    def forward(signum: int, frame: object) -> None:
        requested.append(signum)
        if child is not None and child.returncode is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    details = {"job_dir": str(job.dir), "log": str(job.log_path)}
    live.write(workspace, live.JOB, job.id, {"supervisor": me}, **details)
    job.write_status(QUEUED, supervisor=me)
    if requested:
        name = procs.signal_name(-requested[-1])
        job.write_status(FAILED, signal=name, error=f"killed by {name}", ended_at=now_iso())
        live.remove(workspace, live.JOB, job.id)
        return 1
    # Forked by the warm process when there is one (tied to this supervisor as PR_SET_PDEATHSIG ties it).
    child = warm.launch(command, stdio=[0, 1, 2], cwd=job.dir, tied=True)
    how = "forked by the warm process" if child else f"started cold: {warm.last_refusal}"
    print(f"[ftctl job {job.id}] {' '.join(command)} ({how})", flush=True)
    if child is None:
        child = subprocess.Popen(command, cwd=job.dir, preexec_fn=_die_with(os.getpid()))
    trainer = procs.started_identity(child.pid, child) or {"pid": child.pid}
    # Recorded before anything trusts it: the live record first (it survives a damaged state file).
    live.write(workspace, live.JOB, job.id, {"supervisor": me, "trainer": trainer}, **details)
    job.write_status(RUNNING, supervisor=me, trainer=trainer, pid=child.pid, started_at=now_iso(),
                     command=command)  # fmt: skip
    if requested and child.returncode is None:  # a signal that came while the trainer was starting
        child.send_signal(requested[-1])
    code = child.wait()
    outcome = _outcome(job, code)
    job.write_status(outcome.pop("state"), **outcome, exit_code=code, ended_at=now_iso())
    live.remove(workspace, live.JOB, job.id)
    return 0 if code == 0 and job.result_path.exists() else 1


if __name__ == "__main__":
    sys.exit(_supervise(Path(sys.argv[1])))
