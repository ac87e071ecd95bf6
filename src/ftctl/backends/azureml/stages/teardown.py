"""teardown on Azure ML: delete the endpoint (and its deployment) and wait; with `--compute`, also the
cluster, but only if ftctl created it (check-compute recorded `created`). Deleting what is already gone
is not an error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml import dry_run, serverless
from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling, wait_for
from ftctl.errors import StageFailed
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def _delete(ctx: Context, begin: Any, what: str) -> bool:
    """True when something was deleted, False when it was already gone."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        wait_for(ctx, begin, what)
    except StageFailed as exc:
        if isinstance(exc.__cause__, ResourceNotFoundError):
            ctx.ui.info(f"  {what}: it no longer exists")
            return False
        raise
    return True


def run(ctx: Context, call: StageCall) -> Outputs:
    if call.options.dry_run:  # deletes nothing: says what it would delete
        return dry_run.teardown(ctx, call)
    ws = azure(ctx).workspace
    name = call.upstream.deploy.endpoint_name
    outputs: dict[str, Any] = {"endpoint_name": name, "endpoint_deleted": False}
    if name and call.upstream.deploy.endpoint_kind == "serverless":
        outputs["endpoint_kind"] = "serverless"
        outputs["endpoint_deleted"] = serverless.delete(ctx, name, f"deleting serverless endpoint {name}")
    elif name:
        exists = _endpoint_exists(ctx, name)
        if exists:
            outputs["endpoint_deleted"] = _delete(
                ctx, lambda: ws.online_endpoints.begin_delete(name=name), f"deleting endpoint {name}"
            )
        else:
            ctx.ui.info(f"  endpoint {name} does not exist (already deleted)")
    if call.options.compute:
        compute = call.upstream.check_compute
        cluster = compute.name or ctx.cfg.compute.name
        outputs["compute_name"] = cluster
        if compute.created:
            outputs["compute_deleted"] = _delete(
                ctx, lambda: ws.compute.begin_delete(cluster), f"deleting compute cluster {cluster}"
            )
            ctx.ui.info("  `ftctl check-compute --force` creates it again")
        else:
            outputs["compute_deleted"] = False
            ctx.ui.warn(
                f"compute cluster {cluster} was not created by ftctl (check-compute found it); left alone"
            )
    return outputs


def _endpoint_exists(ctx: Context, name: str) -> bool:
    from azure.core.exceptions import ResourceNotFoundError

    with calling(f"reading endpoint {name}"):
        try:
            azure(ctx).workspace.online_endpoints.get(name)
        except ResourceNotFoundError:
            return False
    return True


def summary(outputs: dict[str, Any]) -> str:
    text = (
        f"{outputs.get('endpoint_name')} {'deleted' if outputs.get('endpoint_deleted') else 'already gone'}"
    )
    if "compute_deleted" in outputs:
        text += (
            f"; cluster {outputs.get('compute_name')} {'deleted' if outputs['compute_deleted'] else 'kept'}"
        )
    return text


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
