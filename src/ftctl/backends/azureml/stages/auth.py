"""auth on Azure ML: a credential (DefaultAzureCredential, a browser sign-in only with a terminal), the
workspace (config.json or ids) and the registry. Records ids and names, never a token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml import dry_run
from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def run(ctx: Context, call: StageCall) -> Outputs:
    if call.options.dry_run:  # never logs in: says what it would connect to
        return dry_run.auth(ctx)
    handles = azure(ctx)
    ref = handles.workspace_ref
    ctx.ui.info(f"  credential: {handles.credential_kind}")
    ctx.ui.info(f"  workspace {ref.workspace_name} (resource group {ref.resource_group}) from {ref.source}")
    client = handles.workspace
    with calling(
        f"reading workspace {ref.workspace_name}", not_found=f"workspace {ref.workspace_name} not found"
    ):
        workspace = client.workspaces.get(client.workspace_name)
    registry_name = ctx.cfg.azureml.registry_name
    registry = handles.registry
    ctx.ui.info(f"  workspace location {workspace.location}; registry {registry_name!r} connected")
    return {
        "credential": handles.credential_kind,
        "subscription_id": client.subscription_id,
        "resource_group": client.resource_group_name,
        "workspace_name": client.workspace_name,
        "workspace_source": ref.source,
        "workspace_id": workspace.id,
        "location": workspace.location,
        "mlflow_tracking_uri": workspace.mlflow_tracking_uri,
        "registry_name": registry_name,
        "registry_subscription_id": registry.subscription_id,
        "registry_resource_group": registry.resource_group_name,
    }


def summary(outputs: dict[str, Any]) -> str:
    where = f"{outputs.get('workspace_name')} ({outputs.get('location')})"
    return f"{where} + registry {outputs.get('registry_name')}"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
