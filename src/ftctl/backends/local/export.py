"""`ftctl export` on the local backend: the registered version's job (or `--job`) is on this machine; the
writers and the fidelity check are backend-neutral (ftctl.export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.errors import UsageError
from ftctl.export import Source
from ftctl.records import StateView

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import State


def source(ctx: Context, state: State, job: str | None) -> Source:
    """The registered version's job, or the job `job` names (exit 2 when there is none)."""
    from ftctl.backends.local.backend import local
    from ftctl.models.layout import resolve_hf_dir
    from ftctl.stages.shared import prepared_files

    recorded = StateView(state)
    registered = None
    if job is None:
        reg = recorded.register
        if not reg.version:
            raise UsageError(
                "nothing is registered to export", hint="run `ftctl register`, or pass --job JOB_ID"
            )
        job_id = str(recorded.submit.need("job_id"))
        registered = f"{reg.model_name} v{reg.version}"
    else:
        job_id = job
    jobs_dir = local(ctx).jobs_dir
    job_dir = jobs_dir / job_id
    if "/" in job_id or job_id.startswith(".") or not (job_dir / "spec.json").is_file():
        raise UsageError(f"no job {job_id!r} in {jobs_dir}", hint="`ftctl status` names the job")
    hf_dir = job_dir / "outputs" / "hf_model"
    if not (hf_dir / "config.json").is_file():
        raise UsageError(f"job {job_id} has no trained model ({hf_dir} is missing): it did not complete")
    spec = json.loads((job_dir / "spec.json").read_text(encoding="utf-8"))
    adapter = job_dir / "outputs" / "adapter"
    files = prepared_files(state)
    split = ctx.cfg.data.test_split
    held = Path(files[split]["path"]) if split in files else None
    return Source(
        job_id=job_id,
        job_dir=job_dir,
        hf_dir=hf_dir,
        adapter_dir=adapter if (adapter / "adapter_config.json").is_file() else None,
        base_dir=resolve_hf_dir(Path(spec["model_path"])),
        registered=registered,
        held_out=held,
    )


def export(ctx: Context, state: State, fmt: str, out: Path, job: str | None) -> dict[str, Any]:
    from ftctl.export import check_format
    from ftctl.export import export as write_and_check

    check_format(fmt)
    return write_and_check(ctx, source(ctx, state, job), fmt, out)
