"""register: register the fine-tuned model as a new version, with lineage tags.

Local: the MLflow model folder the job logged to its MLflow run becomes a version in the workspace's
MLflow model registry, named like the notebook's `<model>-ultrachat-200k` ("/" replaced by "-").
"""

from __future__ import annotations

import contextlib
import io
import math
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ftctl.backends.local.backend import local
from ftctl.errors import StageFailed
from ftctl.evaluation import MIN_IMPROVEMENT
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import lineage_tags, model_name
from ftctl.stages.shared import register_summary as summary

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


REGISTRATION_TAG = "ftctl.registration"


# Lineage tags that differ between two jobs that train the same model (ftctl.stages.shared.lineage_tags).
PER_JOB_TAGS = ("ftctl.job_id", "ftctl.display_name", "ftctl.version")


def _versions(client: Any, name: str) -> list[Any]:
    """The registered versions of `name`, newest first ([] when the model is not registered yet)."""
    escaped = name.replace("'", "\\'")
    try:
        versions = client.search_model_versions(f"name = '{escaped}'")
    except Exception:  # noqa: BLE001 - mlflow raises MlflowException when the model does not exist
        return []
    return sorted(versions, key=lambda v: int(v.version), reverse=True)


def _tags(version: Any) -> dict[str, str]:
    return dict(getattr(version, "tags", None) or {})


def _registered_by(client: Any, name: str, token: str) -> Any | None:
    """The version of `name` an earlier attempt registered with `token` (None if it did not get that
    far)."""
    return next((v for v in _versions(client, name) if _tags(v).get(REGISTRATION_TAG) == token), None)


def _same_model(client: Any, name: str, lineage: dict[str, str], loss: Any) -> Any | None:
    """The newest version of `name` that holds this job's model already: trained from the same base
    model, data and settings (its lineage tags), with the same held-out loss. A deterministic re-run (the
    same settings again, e.g. back to the defaults after an experiment) trains exactly that model."""
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        return None
    wanted = {key: value for key, value in lineage.items() if key not in PER_JOB_TAGS}
    for version in _versions(client, name):
        tags = _tags(version)
        try:
            tagged = float(tags["ftctl.eval.loss"])
        except (KeyError, ValueError):
            continue
        if all(tags.get(k) == v for k, v in wanted.items()) and abs(tagged - loss) <= MIN_IMPROVEMENT:
            return version
    return None


def run(ctx: Context, call: StageCall) -> Outputs:
    ws = local(ctx)
    job = call.upstream.submit
    run_id = job.mlflow_run_id
    if not run_id:
        raise StageFailed("submit recorded no MLflow run id; the job's model cannot be found")
    name = model_name(ctx, call.upstream)
    lineage = lineage_tags(ctx, call.upstream)
    if not call.recorded.get("registration_token"):
        same = _same_model(ws.mlflow.MlflowClient(), name, lineage, job.eval_loss)
        if same is not None:
            return _reuse(ctx, name, same)
    selected = _selected(ctx, job)
    gate = _gate(ctx, call)
    tags = {**lineage, **gate.get("tags", {}), **_selected_tags(selected)}
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
            description=f"Fine-tuned by ftctl job {job.job_id} on ultrachat data",
        )
    ctx.ui.info(f"  registered {name} version {version.version} (from {source})")
    return {
        **_version_outputs(client, name, version),
        "source": source,
        "run_id": run_id,
        "tags": tags,
        "registration_token": token,
        "gate": gate.get("decision"),
        **selected,
    }


def _selected(ctx: Context, job: Any) -> Outputs:
    """Which step of the job the registered weights are (finetune.select) and their held-out loss: the
    figure the gate compares."""
    if job.selected_step is None:
        return {}
    selected = {"select": job.select, "selected_step": job.selected_step, "selected_eval_loss": job.eval_loss}
    loss = "n/a" if job.eval_loss is None else f"{job.eval_loss:.4f}"
    ctx.ui.info(
        f"  model: the weights of step {job.selected_step} (select: {job.select}), held-out loss {loss}"
    )
    return selected


def _selected_tags(selected: Outputs) -> dict[str, str]:
    if not selected:
        return {}
    return {"ftctl.select": str(selected["select"]), "ftctl.selected_step": str(selected["selected_step"])}


def _version_outputs(client: Any, name: str, version: Any) -> Outputs:
    uri = urlparse(client.get_model_version_download_uri(name, version.version))
    return {
        "model_dir": unquote(uri.path) if uri.scheme in ("", "file") else None,
        "model_name": name,
        "version": str(version.version),
        "model_uri": f"models:/{name}/{version.version}",
    }


def _reuse(ctx: Context, name: str, version: Any) -> Outputs:
    """register's outputs for a version that already holds this job's model: nothing is registered."""
    client = local(ctx).mlflow.MlflowClient()
    tags = _tags(version)
    loss = float(tags["ftctl.eval.loss"])
    reason = f"the same model as version {version.version} (same base model, data and settings; held-out loss"
    ctx.ui.info(f"  {reason} {loss:.4f}): using it, nothing new to register")
    decision = {
        "policy": ctx.cfg.register_.gate,
        "result": "same",
        "reasons": [f"{reason} {loss!r})"],
        "fine_tuned": loss,
        "previous_version": str(version.version),
    }
    return {
        **_version_outputs(client, name, version),
        "source": getattr(version, "source", None),
        "run_id": getattr(version, "run_id", None),
        "tags": tags,
        "registration_token": tags.get(REGISTRATION_TAG),
        "gate": decision,
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
    return {"decision": asdict(decision), "tags": gate_tags(ctx, call.upstream, decision)}


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
