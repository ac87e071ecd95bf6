"""A workspace that was copied or moved: found, said once, and adopted.

The state file records the workspace's identity: a random id and the real path it was last used at.
When a command finds the workspace somewhere else, it is either

- **moved** (nothing holds that id at the old path any more): every path the workspace recorded under
  the old path is rewritten to the new one (the state, the job and plan records, and what the backend
  keeps, e.g. MLflow's artifact locations); what it runs (a training job, an endpoint) is still its own;
- **copied** (the original still holds that id): the copy gets an id of its own and its paths are
  rewritten the same way, but what the original runs is the original's: the copy forgets the endpoint
  and the running job it copied (their records, live records and key files), so nothing in the copy can
  signal, claim or show them as its own.

Process identities (pid, start time, command line) are never rewritten: they name what a process is,
not where its files are. Adoption runs under the workspace lock; a command that cannot take the lock
leaves it to the next one. This module is backend-neutral; a backend adds its own paths through
`Backend.relocate`.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import state as st
from ftctl.errors import StateError

if TYPE_CHECKING:
    from ftctl.context import Context

MOVED, COPIED = "moved", "copied"
# Keys whose values describe a process, not a place: never rewritten.
_IDENTITY_KEYS = frozenset({"process", "processes", "cmdline", "identity"})
_RECORD_MAX_BYTES = 4 * 1024 * 1024  # the JSON records ftctl writes are KiB; larger files are left alone
_RECORD_MAX_FILES = 2000


@dataclass(frozen=True)
class Relocation:
    kind: str  # MOVED | COPIED
    old: Path
    new: Path

    def describe(self) -> str:
        if self.kind == MOVED:
            return f"this workspace moved from {self.old}; its recorded paths now point here"
        return (
            f"this workspace is a copy of {self.old}; its paths now point here, and the endpoint or job "
            "that workspace runs stays its own (this copy starts with none)"
        )


def identity(state: dict[str, Any]) -> dict[str, Any]:
    found = state.get("workspace")
    return found if isinstance(found, dict) else {}


def stamp(state: dict[str, Any], workspace: Path) -> None:
    """Record the workspace's id (kept) and its real path (now) in `state`, before it is saved."""
    current = identity(state)
    state["workspace"] = {
        "id": current.get("id") if isinstance(current.get("id"), str) else secrets.token_hex(8),
        "path": str(workspace.resolve()),
    }


def detect(workspace: Path, state: dict[str, Any]) -> Relocation | None:
    """How `workspace` came to be where it is, when its state says it was somewhere else."""
    recorded = identity(state)
    old, wid = recorded.get("path"), recorded.get("id")
    if not isinstance(old, str) or not isinstance(wid, str):
        return None
    new = workspace.resolve()
    if Path(old) == new:
        return None
    try:
        original = json.loads(st.read_text_nofollow(Path(old) / st.STATE_FILE, st.STATE_MAX_BYTES))
        same = isinstance(original, dict) and identity(original).get("id") == wid
    except (OSError, ValueError, RecursionError, StateError):
        same = False
    return Relocation(COPIED if same else MOVED, Path(old), new)


def rewrite(value: Any, old: str, new: str) -> Any:
    """`value` with every string that is `old` or starts with `old/` (a path under it, also as a
    file:// URI) rewritten under `new`; process identities left as they are."""
    if isinstance(value, str):
        for prefix_old, prefix_new in ((old, new), (Path(old).as_uri(), Path(new).as_uri())):
            if value == prefix_old or value.startswith(prefix_old + "/"):
                return prefix_new + value[len(prefix_old) :]
        return value
    if isinstance(value, dict):
        return {k: v if k in _IDENTITY_KEYS else rewrite(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite(item, old, new) for item in value]
    return value


def _rewrite_records(workspace: Path, old: str, new: str) -> None:
    """The JSON records ftctl keeps beside the state (job specs and results, plan caches, live records)."""
    seen = 0
    for folder, dirs, files in os.walk(workspace):
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
        for name in files:
            path = Path(folder) / name
            if not name.endswith(".json") or name.startswith(".") or path.is_symlink():
                continue
            seen += 1
            if seen > _RECORD_MAX_FILES:
                return
            try:
                data = json.loads(st.read_text_nofollow(path, _RECORD_MAX_BYTES))
            except (OSError, ValueError, RecursionError, StateError):
                continue
            changed = rewrite(data, old, new)
            if changed != data:
                st.atomic_write_text(path, json.dumps(changed, indent=2) + "\n")


def _forget_originals(ctx: Context, state: dict[str, Any]) -> list[str]:
    """In a copy: what the original runs is not this workspace's. The records that name it go (the
    endpoint's and a job still running), and so do the copied live records and keys."""
    forgotten = []
    for stage in ("deploy", "submit"):
        rec = st.record(state, stage)
        outputs = rec.get("outputs") or {}
        running_job = stage == "submit" and rec.get("status") == st.RUNNING
        if (stage == "deploy" and outputs.get("pid")) or running_job:
            state["stages"][stage] = st.empty_record()
            forgotten.append(stage)
    for folder, pattern in (("live", "*.json"), ("secrets", "*.key")):
        for path in sorted((ctx.workspace / folder).glob(pattern)):
            if not path.is_symlink():
                path.unlink(missing_ok=True)
    return forgotten


def _refresh_upstream(before: dict[str, Any], after: dict[str, Any]) -> None:
    """After paths in outputs were rewritten, each fingerprint's memory of an upstream stage follows
    (stages in pipeline order, as the state lists them): a move makes nothing stale."""
    renamed: dict[str, tuple[str, str]] = {}
    for name, rec in (after.get("stages") or {}).items():
        upstream = (rec.get("fingerprint") or {}).get("upstream") or {}
        for up, remembered in upstream.items():
            if up in renamed and remembered == renamed[up][0]:
                upstream[up] = renamed[up][1]
        old_rec = (before.get("stages") or {}).get(name) or {}
        renamed[name] = (st.stage_digest(old_rec), st.stage_digest(rec))


def adopt(ctx: Context, state: dict[str, Any], found: Relocation) -> dict[str, Any]:
    """Make a moved or copied workspace its own (under the lock the caller holds); returns the state,
    saved."""
    old, new = str(found.old), str(found.new)
    before, state = state, rewrite(state, old, new)
    ctx.backend.relocate(old, new, state)
    _refresh_upstream(before, state)
    _rewrite_records(ctx.workspace, old, new)
    if found.kind == COPIED:
        state.pop("workspace", None)  # a new id, below
        forgotten = _forget_originals(ctx, state)
        if forgotten:
            ctx.ui.info(f"  forgot what the original runs: {', '.join(forgotten)} (run them here anew)")
    stamp(state, ctx.workspace)
    ctx.state_store.save(state)
    return state
