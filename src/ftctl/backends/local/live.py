"""The record of what runs on behalf of a workspace: <workspace>/live/<kind>-<name>.json.

Every detached process ftctl starts (a training job's supervisor and trainer, an endpoint server) is
written here, atomically, before ftctl trusts it, and the record goes when the process ends (the job's
supervisor removes its own; teardown, a redeploy and `stop_live` remove an endpoint's). These files are
separate from the stage-state file on purpose: a damaged or reset state.json forgets which stages ran,
but never what still runs, so `ftctl reset` and `ftctl status` can always find, name and stop it.

A record holds process identities (see procs), never bare pids: a record whose processes have all
ended (or whose pids were reused by something else) describes an ended resource, and nothing in it is
ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftctl.backends.local import procs
from ftctl.errors import StateError
from ftctl.state import atomic_write_text, now_iso, read_text_nofollow

LIVE_DIR = "live"
JOB, ENDPOINT = "job", "endpoint"
KINDS = (JOB, ENDPOINT)
SHOWN_DETAILS = ("job_dir", "log", "url", "host", "port", "key_file")


@dataclass
class LiveResource:
    """One recorded training job or endpoint, and whether any of its processes still runs."""

    kind: str  # "job" or "endpoint"
    name: str  # the job id or the endpoint name
    path: Path  # its record file
    processes: dict[str, procs.Identity] = field(default_factory=dict)  # role -> identity
    details: dict[str, Any] = field(default_factory=dict)  # job_dir, log / url, host, port, key_file
    alive: bool = False

    @property
    def pids(self) -> list[int]:
        return [int(p["pid"]) for p in self.processes.values() if isinstance(p, dict) and "pid" in p]

    def describe(self) -> str:
        """'endpoint ftctl-1 (pid 123, http://127.0.0.1:5001)' / 'training job job-... (pid 456)'."""
        main = (
            self.processes.get("trainer") or self.processes.get("server") or self.processes.get("supervisor")
        )
        pid = f"pid {main.get('pid')}" if isinstance(main, dict) else "no pid"
        if self.kind == ENDPOINT:
            where = self.details.get("url") or f"port {self.details.get('port')}"
            return f"endpoint {self.name} ({pid}, {where})"
        return f"training job {self.name} ({pid})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "alive": self.alive,
            "pids": self.pids,
            "record": str(self.path),
            **{k: v for k, v in self.details.items() if k in SHOWN_DETAILS},
        }


def live_dir(workspace: Path) -> Path:
    return Path(workspace) / LIVE_DIR


def record_path(workspace: Path, kind: str, name: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown live resource kind {kind!r}")
    safe = "".join(c if c.isalnum() or c in "-_.:" else "_" for c in name).lstrip(".") or "_"
    return live_dir(workspace) / f"{kind}-{safe}.json"


def write(
    workspace: Path, kind: str, name: str, processes: dict[str, procs.Identity | None], **details: Any
) -> Path:
    """Record (or update) a live resource, atomically; the folder and file are never links."""
    folder = live_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or not folder.is_dir():
        raise StateError(f"{folder} is not a real folder; ftctl keeps its records in the workspace itself")
    path = record_path(workspace, kind, name)
    data = {
        "kind": kind,
        "name": name,
        "processes": {role: ident for role, ident in processes.items() if ident},
        "details": details,
        "recorded_at": now_iso(),
    }
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    return path


def remove(workspace: Path, kind: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(workspace, kind, name).unlink()


def _read(path: Path) -> LiveResource | None:
    try:
        data = json.loads(read_text_nofollow(path))
    except (OSError, ValueError, StateError):
        return None
    if not isinstance(data, dict) or data.get("kind") not in KINDS or not isinstance(data.get("name"), str):
        return None
    processes = {
        role: ident for role, ident in (data.get("processes") or {}).items() if procs.is_identity(ident)
    }
    details = data.get("details")
    details = dict(details) if isinstance(details, dict) else {}
    resource = LiveResource(str(data["kind"]), str(data["name"]), path, processes, details)
    resource.alive = any(procs.alive(ident) for ident in processes.values())
    return resource


def live_resources(workspace: Path, *, include_ended: bool = False) -> list[LiveResource]:
    """The training jobs and endpoints recorded under <workspace>/live whose processes still run
    (every record with `include_ended`), jobs first. Read-only: takes no lock, signals nothing."""
    folder = live_dir(workspace)
    if folder.is_symlink() or not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        resource = _read(path)
        if resource is not None and (resource.alive or include_ended):
            found.append(resource)
    return sorted(found, key=lambda r: (KINDS.index(r.kind), r.name))


def unrecorded(workspace: Path, state: dict[str, Any]) -> list[LiveResource]:
    """The live resources that the stage-state `state` does not record (its submit job, its deploy
    endpoint): what a damaged, reset or restored state file has lost track of."""
    stages = state.get("stages") if isinstance(state, dict) else None
    stages = stages if isinstance(stages, dict) else {}

    def recorded(stage: str, key: str) -> Any:  # defensive: the state may be damaged
        rec = stages.get(stage)
        out = rec.get("outputs") if isinstance(rec, dict) else None
        return out.get(key) if isinstance(out, dict) else None

    job_id = recorded("submit", "job_id")
    endpoint = recorded("deploy", "endpoint_name")
    return [
        r
        for r in live_resources(workspace)
        if not ((r.kind == JOB and r.name == job_id) or (r.kind == ENDPOINT and r.name == endpoint))
    ]


def key_file_of(workspace: Path, resource: LiveResource) -> Path | None:
    """The endpoint's key file: the `*.key` of the recorded name directly under <workspace>/secrets,
    wherever the record says (a record made before the workspace moved names the old path; nothing
    outside this workspace's secrets/ is trusted with a deletion)."""
    raw = resource.details.get("key_file")
    if resource.kind != ENDPOINT or not isinstance(raw, str) or not raw:
        return None
    name = Path(raw).name
    if not name.endswith(".key") or name.startswith("."):
        return None
    return Path(workspace) / "secrets" / name


def _stop_one(workspace: Path, resource: LiveResource, timeout_s: float) -> bool:
    """Stop what still runs of `resource` (identity-checked), then drop its key and record."""
    stopped = False
    order = ("trainer", "server", "supervisor")
    roles = sorted(resource.processes, key=lambda r: order.index(r) if r in order else len(order))
    for role in roles:
        stopped = procs.stop(resource.processes[role], timeout_s=timeout_s) or stopped
    if resource.kind == JOB:
        # The supervisor records the trainer's end and removes the record itself; give it a moment.
        supervisor = resource.processes.get("supervisor")
        procs.wait_ended(supervisor, 5.0)
    key = key_file_of(workspace, resource)
    if key is not None:
        with contextlib.suppress(FileNotFoundError):
            key.unlink()
    with contextlib.suppress(FileNotFoundError):
        resource.path.unlink()
    return stopped


def stop_live(
    workspace: Path,
    resources: Iterable[LiveResource] | None = None,
    *,
    kinds: Iterable[str] = KINDS,
    timeout_s: float = 10.0,
    notify: Callable[[str], None] | None = None,
) -> list[LiveResource]:
    """Stop live resources of this workspace and forget them: every one of `kinds` (default: jobs and
    endpoints), or just `resources`. Each process is signalled only after its identity is checked; an
    endpoint's key file goes with it. Records of resources that already ended are removed as well.
    Returns the resources that were running and were stopped. Call it under the workspace lock."""
    wanted = set(kinds)
    if resources is None:
        targets = [r for r in live_resources(workspace, include_ended=True) if r.kind in wanted]
    else:
        targets = list(resources)
    stopped = []
    for resource in targets:
        if resource.alive and notify is not None:
            notify(f"stopping {resource.describe()}")
        if _stop_one(workspace, resource, timeout_s) and resource.alive:
            stopped.append(resource)
    return stopped


def forget_ended(workspace: Path) -> list[LiveResource]:
    """Remove the records (and endpoint key files) of resources whose processes have all ended."""
    ended = [r for r in live_resources(workspace, include_ended=True) if not r.alive]
    for resource in ended:
        _stop_one(workspace, resource, 0.0)
    return ended


def orphan_keys(workspace: Path) -> list[Path]:
    """Endpoint key files (secrets/*.key) that no live endpoint record claims."""
    secrets = Path(workspace) / "secrets"
    if secrets.is_symlink() or not secrets.is_dir():
        return []
    claimed = {
        key.resolve()
        for r in live_resources(workspace)
        if r.kind == ENDPOINT and (key := key_file_of(workspace, r)) is not None
    }
    return [p for p in sorted(secrets.glob("*.key")) if p.resolve() not in claimed and not p.is_symlink()]


def remove_orphan_keys(workspace: Path) -> list[Path]:
    removed = []
    for path in orphan_keys(workspace):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(path)
    return removed
