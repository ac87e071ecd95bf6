"""register on Azure ML: the job's trained_model output as an MLflow model version in the workspace,
named like the notebook's `<model>-ultrachat-200k` ("/" replaced), version = a timestamp, with ftctl's
lineage tags. The version is recorded before the request, so a re-run after an interruption finds the
version it created instead of registering another.

The promotion gate (register.gate) runs first, from the job's own metrics and the previous version's
tags (ftctl.backends.azureml.evaluate); its numbers become tags of the version. A dry run neither logs
in nor reads metrics: it says what the gate would read."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml import dry_run
from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling, show_dry_run
from ftctl.errors import StageFailed
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import lineage_tags, model_name
from ftctl.stages.shared import register_summary as summary

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def _existing(ctx: Context, name: str, version: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    with calling(f"reading model {name} version {version}"):
        try:
            return azure(ctx).workspace.models.get(name=name, version=version)
        except ResourceNotFoundError:
            return None


def _entity(ctx: Context, call: StageCall, job_name: str, tags: dict[str, str]) -> Any:
    """The model version register creates (an azure-ai-ml Model)."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    base = call.upstream.pick_model.name
    return Model(
        path=f"azureml://jobs/{job_name}/outputs/trained_model",
        type=AssetTypes.MLFLOW_MODEL,
        name=model_name(ctx, call.upstream),
        version=str(call.recorded.get("version") or int(time.time())),
        description=f"{base} fine-tuned on ultrachat_200k by ftctl (pipeline job {job_name})",
        tags=tags,
    )


def _dry_run(ctx: Context, call: StageCall, job_name: str) -> Outputs:
    entity = _entity(ctx, call, job_name, lineage_tags(ctx, call.upstream))
    show_dry_run(ctx, "model version that register would create", entity)
    return {
        "dry_run": True,
        "model_name": entity.name,
        "version": entity.version,
        "source": entity.path,
        "gate": dry_run.gate(ctx),
    }


def run(ctx: Context, call: StageCall) -> Outputs:
    if dry_run.offline(call, "submit"):
        return dry_run.register(ctx)
    if call.upstream.submit.route == "job":
        from ftctl.backends.azureml.stages import finetuning_job

        return finetuning_job.register(ctx, call)
    from ftctl.backends.azureml.evaluate import check_gate

    job_name = call.upstream.submit.job_name
    if not job_name:
        raise StageFailed("submit recorded no job name; there is no trained model to register")
    if call.options.dry_run:
        return _dry_run(ctx, call, job_name)
    decision, gate_tags = check_gate(ctx, call)
    entity = _entity(ctx, call, job_name, {**lineage_tags(ctx, call.upstream), **gate_tags})
    recorded = call.recorded
    name, version, path = entity.name, entity.version, entity.path
    call.checkpoint({"model_name": name, "version": version, "source": path})
    registered = _existing(ctx, name, version) if recorded.get("version") else None
    if registered is None:
        with calling(f"registering model {name} version {version}"):
            registered = azure(ctx).workspace.models.create_or_update(entity)
        ctx.ui.info(f"  registered {name} version {version} from {path}")
    else:
        ctx.ui.info(f"  {name} version {version} was already registered by the interrupted attempt")
    return {
        "model_name": name,
        "version": version,
        "id": registered.id,
        "model_uri": f"azureml:{name}:{version}",
        "source": path,
        "job_name": job_name,
        "tags": dict(registered.tags or entity.tags or {}),
        "gate": asdict(decision),
    }


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
