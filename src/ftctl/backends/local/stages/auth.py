"""auth: connect to the backend. Local: create the workspace and its MLflow tracking + registry store."""

from __future__ import annotations

import getpass
import platform
import socket
from typing import TYPE_CHECKING, Any

from ftctl.backends.local.backend import local
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def run(ctx: Context, call: StageCall) -> Outputs:
    ws = local(ctx)
    ws.create()
    ctx.ui.info(f"  workspace {ws.root}")
    mlflow = ws.mlflow
    client = mlflow.MlflowClient()
    client.search_experiments(max_results=1)  # creates and migrates the SQLite store on first use
    ctx.ui.info(f"  MLflow tracking + model registry: {ws.tracking_uri}")
    return {
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "platform": platform.platform(terse=True),
        "workspace": str(ws.root),
        "tracking_uri": ws.tracking_uri,
        "registry_uri": ws.tracking_uri,
        "mlflow_version": mlflow.__version__,
    }


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('user')}@{outputs.get('host')}"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
