"""register: register the fine-tuned model as a new version, with lineage tags.

Local: the MLflow model folder the job logged to its MLflow run becomes a version in the workspace's
MLflow model registry, named like the notebook's `<model>-ultrachat-200k` ("/" replaced by "-").
"""

from __future__ import annotations

import contextlib
import io
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ftctl.errors import StageFailed
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import lineage_tags, model_name
from ftctl.stages.shared import register_summary as summary

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


REGISTRATION_TAG = "ftctl.registration"


def _registered_by(client: Any, name: str, token: str) -> Any | None:
    """The version of `name` an earlier attempt registered with `token` (None if it did not get that
    far)."""
    escaped = name.replace("'", "\\'")
    try:
        versions = client.search_model_versions(f"name = '{escaped}'")
    except Exception:  # noqa: BLE001 - mlflow raises MlflowException when the model does not exist
        return None
    found = [v for v in versions if (getattr(v, "tags", None) or {}).get(REGISTRATION_TAG) == token]
    return max(found, key=lambda v: int(v.version)) if found else None


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
        client = mlflow.MlflowClient()
        # A token recorded before the registry call and carried by the version it creates: an attempt
        # killed after the call but before its outputs were saved is found, not registered twice.
        token = call.recorded.get("registration_token")
        version = _registered_by(client, name, token) if token else None
        if version is not None:
            ctx.ui.info(f"  version {version.version} was registered by the interrupted attempt; using it")
        else:
            token = token or secrets.token_hex(8)
            call.checkpoint({"registration_token": token, "model_name": name, "run_id": run_id})
            with contextlib.redirect_stderr(io.StringIO()):  # mlflow prints "Successfully registered"
                version = mlflow.register_model(source, name, tags={**tags, REGISTRATION_TAG: token})
        client.update_model_version(
            name,
            version.version,
            description=f"Fine-tuned by ftctl job {job.get('job_id')} on ultrachat data",
        )
    ctx.ui.info(f"  registered {name} version {version.version} (from {source})")
    uri = urlparse(client.get_model_version_download_uri(name, version.version))
    return {
        "model_dir": unquote(uri.path) if uri.scheme in ("", "file") else None,
        "model_name": name,
        "version": str(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "source": source,
        "run_id": run_id,
        "tags": tags,
        "registration_token": token,
        "gate": gate.get("decision"),
    }


def output_files(ctx: Context, outputs: Outputs) -> dict[str, Path]:
    """The registered version's files in the workspace's artifact store (what deploy serves)."""
    return {"registered model": Path(outputs["model_dir"])} if outputs.get("model_dir") else {}


def _gate(ctx: Context, call: StageCall) -> dict[str, Any]:
    """The promotion gate (register.gate): refuses (StageFailed, exit 1) a model no better than the
    base or the previous version on held-out loss, unless `register --force`; its numbers as tags."""
    from dataclasses import asdict

    from ftctl.backends.local.evaluate import check_gate, gate_tags

    decision = check_gate(ctx, call)
    return {"decision": asdict(decision), "tags": gate_tags(ctx, call, decision)}


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
