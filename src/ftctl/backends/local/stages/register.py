"""register: register the fine-tuned model as a new version, with lineage tags.

Local: the MLflow model folder the job logged to its MLflow run becomes a version in the workspace's
MLflow model registry, named like the notebook's `<model>-ultrachat-200k` ("/" replaced by "-").
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any

from ftctl.errors import StageFailed
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import lineage_tags, model_name

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def run(ctx: Context, call: StageCall) -> Outputs:
    ws = ctx.local
    job = call.outputs("submit")
    run_id = job.get("mlflow_run_id")
    if not run_id:
        raise StageFailed("submit recorded no MLflow run id; the job's model cannot be found")
    name = model_name(ctx, call)
    gate = _gate(ctx, call)
    tags = {**lineage_tags(ctx, call), **gate.get("tags", {})}
    source = f"runs:/{run_id}/mlflow_model"
    with ctx.ui.spinner(f"registering {name} in the MLflow model registry"):
        mlflow = ws.mlflow
        with contextlib.redirect_stderr(io.StringIO()):  # mlflow prints its own "Successfully registered"
            version = mlflow.register_model(source, name, tags=tags)
        client = mlflow.MlflowClient()
        client.update_model_version(
            name,
            version.version,
            description=f"Fine-tuned by ftctl job {job.get('job_id')} on ultrachat data",
        )
    ctx.ui.info(f"  registered {name} version {version.version} (from {source})")
    return {
        "model_name": name,
        "version": str(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "source": source,
        "run_id": run_id,
        "tags": tags,
        "gate": gate.get("decision"),
    }


def _gate(ctx: Context, call: StageCall) -> dict[str, Any]:
    """The promotion gate (register.gate): refuses (StageFailed, exit 1) a model no better than the
    base or the previous version on held-out loss, unless `register --force`; its numbers as tags."""
    from dataclasses import asdict

    from ftctl.backends.local.evaluate import check_gate, gate_tags

    decision = check_gate(ctx, call)
    return {"decision": asdict(decision), "tags": gate_tags(ctx, call, decision)}


def summary(outputs: dict[str, Any]) -> str:
    text = f"{outputs.get('model_name')} v{outputs.get('version')}"
    gate = outputs.get("gate")
    if isinstance(gate, dict) and gate.get("result") == "forced":
        text += " (forced past the gate)"
    return text


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
