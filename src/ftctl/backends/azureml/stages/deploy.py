"""deploy on Azure ML: a managed online endpoint (key auth), the deployment (instance type checked against
the model's inference allow-list, instance count, liveness probe delay, request timeout), then all
traffic to it. Names are recorded before the first request, so a re-run picks up where an interrupted
one stopped (each step looks at what exists before creating it)."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml import dry_run, serverless
from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling, elapsed, show_dry_run, status_text, wait_for
from ftctl.errors import StageFailed, UsageError
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.shared import check_lists
from ftctl.ttl import expires_at

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.records import PickModelOutputs
    from ftctl.stages.contract import Outputs, StageCall

ENDPOINT_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
BUSY = {"creating", "updating", "deleting", "scaling"}
LOGS_HINT = "see the container logs: az ml online-deployment get-logs -e {endpoint} -n {deployment}"


def _get(fn: Any, what: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    with calling(what):
        try:
            return fn()
        except ResourceNotFoundError:
            return None


def alive(ctx: Context, outputs: dict[str, Any]) -> bool:
    """Whether the endpoint deploy recorded still exists and is serving (provisioned)."""
    name = outputs.get("endpoint_name")
    if not name:
        return False
    if outputs.get("endpoint_kind") == "serverless":
        return serverless.alive(ctx, outputs)
    endpoints = azure(ctx).workspace.online_endpoints
    endpoint = _get(lambda: endpoints.get(name), f"reading endpoint {name}")
    return endpoint is not None and status_text(endpoint.provisioning_state).lower() in (
        "succeeded",
        "updating",
    )


def retire(ctx: Context, outputs: dict[str, Any]) -> None:
    """Before deploy runs again (--force, or after a failure), delete the endpoint the previous attempt
    created, so that no endpoint is left running (and billing) without a record."""
    name = outputs.get("endpoint_name")
    if not name:
        return
    if outputs.get("endpoint_kind") == "serverless":
        return serverless.retire(ctx, outputs)
    endpoints = azure(ctx).workspace.online_endpoints
    if _get(lambda: endpoints.get(name), f"reading endpoint {name}") is None:
        return
    wait_for(ctx, lambda: endpoints.begin_delete(name=name), f"deleting the previous endpoint {name}")


def _wait_until_settled(ctx: Context, fetch: Any, what: str) -> Any:
    start = time.monotonic()
    thing = fetch()
    while thing is not None and status_text(thing.provisioning_state).lower() in BUSY:
        ctx.ui.info(f"  ... {what} is {status_text(thing.provisioning_state)} ({elapsed(start)})")
        time.sleep(ctx.cfg.poll_interval_s)
        thing = fetch()
    return thing


def _endpoint_name(ctx: Context, call: StageCall) -> str:
    name = str(
        call.recorded.get("endpoint_name") or f"{ctx.cfg.deploy.endpoint_name_prefix}{int(time.time())}"
    )
    if not ENDPOINT_NAME.match(name):
        raise UsageError(
            f"endpoint name {name!r} is not valid (3-32 letters, digits and '-', starting with a letter)",
            hint="shorten deploy.endpoint_name_prefix (ftctl appends a 10-digit timestamp)",
        )
    return name


def _entities(ctx: Context, call: StageCall, name: str) -> tuple[Any, Any]:
    """The SDK's endpoint and deployment entities the notebook creates."""
    from azure.ai.ml.entities import (
        ManagedOnlineDeployment,
        ManagedOnlineEndpoint,
        OnlineRequestSettings,
        ProbeSettings,
    )

    cfg = ctx.cfg.deploy
    registered = call.upstream.register
    size = instance_type(ctx, call.upstream.pick_model)
    endpoint = ManagedOnlineEndpoint(
        name=name,
        description=f"{registered.model_name} v{registered.version} (ftctl)",
        auth_mode="key",
    )
    deployment = ManagedOnlineDeployment(
        name=cfg.deployment_name,
        endpoint_name=name,
        model=registered.need("id"),
        instance_type=size,
        instance_count=cfg.instance_count,
        liveness_probe=ProbeSettings(initial_delay=cfg.liveness_initial_delay_s),
        request_settings=OnlineRequestSettings(request_timeout_ms=cfg.request_timeout_ms),
    )
    return endpoint, deployment


def instance_type(ctx: Context, model: PickModelOutputs) -> str:
    """The deployment's VM size: deploy.instance_type, else the model's recommended inference size;
    UsageError (naming the allowed sizes) when it is retired or outside the inference allow-list."""
    from ftctl.backends.azureml.lifecycle import deploy_size

    allow = model.inference_compute_allow_list
    recommended = list(model.inference_recommended_skus or [])
    size = deploy_size(ctx.cfg.deploy.instance_type, allow, recommended)[0]
    assert size is not None  # deploy_size raises when it has none (required)
    return size


def _create_endpoint(ctx: Context, endpoint: Any) -> None:
    ws, name = azure(ctx).workspace, endpoint.name
    current = _wait_until_settled(ctx, lambda: _fetch_endpoint(ctx, name), f"endpoint {name}")
    if current is None or status_text(current.provisioning_state).lower() == "failed":
        wait_for(
            ctx, lambda: ws.online_endpoints.begin_create_or_update(endpoint), f"creating endpoint {name}"
        )
    else:
        ctx.ui.info(f"  endpoint {name} exists ({status_text(current.provisioning_state)})")


def _fetch_endpoint(ctx: Context, name: str) -> Any:
    return _get(lambda: azure(ctx).workspace.online_endpoints.get(name), f"reading endpoint {name}")


def _create_deployment(ctx: Context, deployment: Any) -> None:
    ws, name, deployment_name = azure(ctx).workspace, deployment.endpoint_name, deployment.name

    def fetch_deployment() -> Any:
        return _get(
            lambda: ws.online_deployments.get(name=deployment_name, endpoint_name=name),
            f"reading deployment {deployment_name}",
        )

    existing = _wait_until_settled(ctx, fetch_deployment, f"deployment {deployment_name}")
    hint = (
        LOGS_HINT.format(endpoint=name, deployment=deployment_name)
        + "; `ftctl teardown` deletes the endpoint"
    )
    if existing is None or status_text(existing.provisioning_state).lower() == "failed":
        size = f"{deployment.instance_count} x {deployment.instance_type}"
        what = f"creating deployment {deployment_name} ({size})"
        try:
            wait_for(ctx, lambda: ws.online_deployments.begin_create_or_update(deployment), what)
        except StageFailed as exc:
            exc.hint = hint
            raise
        existing = fetch_deployment()
    state = status_text(existing.provisioning_state if existing else None)
    if state.lower() != "succeeded":
        raise StageFailed(f"deployment {deployment_name} of endpoint {name} is {state}", hint=hint)


def _all_traffic_to(ctx: Context, name: str, deployment_name: str) -> Any:
    current = _fetch_endpoint(ctx, name)
    if current is None:
        raise StageFailed(f"endpoint {name} disappeared during the deployment")
    if dict(current.traffic or {}) != {deployment_name: 100}:
        current.traffic = {deployment_name: 100}
        update = current
        wait_for(
            ctx,
            lambda: azure(ctx).workspace.online_endpoints.begin_create_or_update(update),
            f"sending all traffic to {deployment_name}",
        )
        current = _fetch_endpoint(ctx, name)
    return current


def run(ctx: Context, call: StageCall) -> Outputs:
    if dry_run.offline(call, "register"):
        return dry_run.deploy(ctx)
    if call.upstream.submit.route == "job":  # the fine-tuning job's model: a serverless endpoint
        return serverless.deploy(ctx, call, _endpoint_name(ctx, call))
    cfg = ctx.cfg.deploy
    registered, model = call.upstream.register, call.upstream.pick_model
    size = instance_type(ctx, model)
    allow = model.inference_compute_allow_list
    if allow:
        source = model.allow_list_source or "tags"
        check_lists(size, allow, [], f"the model's inference allow-list ({source})")
    name = _endpoint_name(ctx, call)
    deployment_name = cfg.deployment_name
    endpoint, deployment = _entities(ctx, call, name)
    if call.options.dry_run:
        show_dry_run(ctx, "online endpoint that deploy would create", endpoint)
        show_dry_run(ctx, "deployment that deploy would create", deployment)
        ctx.ui.result(f"# then: traffic {{{deployment_name!r}: 100}} on endpoint {name}")
        return {"dry_run": True, "endpoint_name": name, "deployment_name": deployment_name}

    call.checkpoint({"endpoint_name": name, "deployment_name": deployment_name})
    _create_endpoint(ctx, endpoint)  # or wait for an interrupted create to settle
    _create_deployment(ctx, deployment)
    current = _all_traffic_to(ctx, name, deployment_name)
    ctx.ui.info(f"  endpoint {name} ready: {current.scoring_uri} (key auth; the key stays in Azure)")
    return {
        "endpoint_name": name,
        "deployment_name": deployment_name,
        "scoring_uri": current.scoring_uri,
        "auth_mode": "key",
        "traffic": dict(current.traffic or {}),
        "instance_type": size,
        "instance_count": cfg.instance_count,
        "model_id": registered.need("id"),
        "model_uri": registered.model_uri,
        "model_version": registered.version,
        "endpoint_kind": "managed",
        "expires_at": expires_at(cfg.ttl),  # the cost guard (Azure ML has no endpoint expiry of its own)
    }


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('endpoint_name')} {outputs.get('deployment_name')} ({outputs.get('instance_type')})"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
