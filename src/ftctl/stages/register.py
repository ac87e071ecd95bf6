"""register: register the fine-tuned model as a new version, with lineage tags.

Local: the MLflow model folder the job logged to its MLflow run becomes a version in the workspace's
MLflow model registry, named like the notebook's `<model>-ultrachat-200k` ("/" replaced by "-").
"""

from __future__ import annotations

import contextlib
import io
from typing import TYPE_CHECKING, Any

import ftctl
from ftctl.errors import StageFailed
from ftctl.state import digest

if TYPE_CHECKING:
    from ftctl.context import Context


def model_name(ctx: Context) -> str:
    base = ctx.outputs("pick-model").get("name") or ctx.cfg.model.name
    return ctx.cfg.register_.model_name or f"{base}-ultrachat-200k".replace("/", "-")


def lineage_tags(ctx: Context) -> dict[str, str]:
    job = ctx.outputs("submit")
    model = ctx.outputs("pick-model")
    files = ctx.outputs("prepare-data").get("files") or {}
    tags = {
        "ftctl.job_id": str(job.get("job_id")),
        "ftctl.display_name": str(job.get("display_name")),
        "ftctl.base_model": str(model.get("name")),
        "ftctl.base_model_hash": str(model.get("content_hash")),
        "ftctl.config_hash": digest(job.get("params")),
        "ftctl.version": ftctl.__version__,
    }
    for split in (ctx.cfg.data.train_split, ctx.cfg.data.test_split):
        if split in files:
            tags[f"ftctl.data.{split}.sha256"] = str(files[split].get("sha256"))
    return tags


def run(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    ws = ctx.require_local("register")
    job = ctx.outputs("submit")
    run_id = job.get("mlflow_run_id")
    if not run_id:
        raise StageFailed("submit recorded no MLflow run id; the job's model cannot be found")
    name = model_name(ctx)
    tags = lineage_tags(ctx)
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
    }


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('model_name')} v{outputs.get('version')}"
