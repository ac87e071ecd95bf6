"""The serverless endpoint of the fine-tuning job route: deploy, its liveness, scoring and teardown.

A model fine-tuned through the fine-tuning job API is served as a `ServerlessEndpoint` (azure-ai-ml's
`ml_client.serverless_endpoints`; azureml-examples, sdk/python/jobs/finetuning/standalone/
model-as-a-service/chat-completion): `ServerlessEndpoint(name, model_id=azureml://locations/<region>/
workspaces/<workspace id>/models/<name>/versions/<version>)` -> `begin_create_or_update`, `get` (its
`scoring_uri`), `get_keys` (the key, never recorded), `begin_delete`. It answers the OpenAI-compatible
`<scoring_uri>/v1/chat/completions` with the key in the `Authorization` header; the model's
`maas-finetuning-deploy-regions` tag names the regions it can be deployed to.

The endpoint's name is recorded before the create request, so an interrupted deploy is picked up (and
teardown always knows what to delete).
"""

from __future__ import annotations

import functools
import json
import time
from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling, elapsed, status_text, wait_for
from ftctl.errors import StageFailed, UsageError
from ftctl.ttl import expires_at

if TYPE_CHECKING:
    from ftctl.chat import Endpoint, Reply
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall

KIND = "serverless"
CHAT_ROUTE = "/v1/chat/completions"
BUSY = {"creating", "updating", "deleting"}


def _get(ctx: Context, name: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    with calling(f"reading serverless endpoint {name}"):
        try:
            return azure(ctx).workspace.serverless_endpoints.get(name)
        except ResourceNotFoundError:
            return None


def _state(endpoint: Any) -> str:
    return status_text(getattr(endpoint, "provisioning_state", None)).lower()


def alive(ctx: Context, outputs: dict[str, Any]) -> bool:
    name = outputs.get("endpoint_name")
    found = _get(ctx, str(name)) if name else None
    return found is not None and _state(found) in ("succeeded", "updating")


def delete(ctx: Context, name: str, what: str) -> bool:
    """Delete the serverless endpoint `name` and wait; False when it was already gone."""
    if _get(ctx, name) is None:
        ctx.ui.info(f"  serverless endpoint {name} does not exist (already deleted)")
        return False
    endpoints = azure(ctx).workspace.serverless_endpoints
    wait_for(ctx, lambda: endpoints.begin_delete(name), what)
    return True


def retire(ctx: Context, outputs: dict[str, Any]) -> None:
    """Before deploy runs again, delete the endpoint the previous attempt created."""
    name = outputs.get("endpoint_name")
    if name:
        delete(ctx, str(name), f"deleting the previous serverless endpoint {name}")


def _model_id(ctx: Context, call: StageCall) -> tuple[str, str]:
    """The registered model's id as a serverless endpoint takes it (location and workspace id, not the
    ARM id), and the workspace's region; UsageError when the model cannot be deployed there."""
    ws = azure(ctx).workspace
    with calling(f"reading workspace {ws.workspace_name}"):
        workspace = ws.workspaces.get(ws.workspace_name)
    region = str(workspace.location)
    regions = list(getattr(call.upstream.pick_model, "maas_deploy_regions", None) or [])
    if regions and region.lower() not in {r.lower() for r in regions}:
        raise UsageError(
            f"a fine-tuned {call.upstream.pick_model.name} deploys serverless only in {', '.join(regions)}; "
            f"workspace {ws.workspace_name} is in {region}",
            hint="use a workspace in one of those regions (azureml.workspace_name)",
        )
    registered = call.upstream.register
    name, version = registered.need("model_name"), registered.need("version")
    workspace_id = getattr(workspace, "_workspace_id", None)
    return f"azureml://locations/{region}/workspaces/{workspace_id}/models/{name}/versions/{version}", region


def _settled(ctx: Context, name: str) -> Any:
    """The endpoint once it is no longer being created, updated or deleted (None when there is none)."""
    start = time.monotonic()
    current = _get(ctx, name)
    while current is not None and _state(current) in BUSY:
        ctx.ui.info(f"  ... serverless endpoint {name} is {_state(current)} ({elapsed(start)})")
        time.sleep(ctx.cfg.poll_interval_s)
        current = _get(ctx, name)
    return current


def deploy(ctx: Context, call: StageCall, name: str) -> Outputs:
    from azure.ai.ml.entities import ServerlessEndpoint

    registered = call.upstream.register
    model_id, region = _model_id(ctx, call)
    entity = ServerlessEndpoint(name=name, model_id=model_id, auth_mode="key")
    if call.options.dry_run:
        import yaml

        body = {"name": name, "model_id": model_id, "auth_mode": "key", "location": region}
        ctx.ui.result(
            f"# serverless endpoint that deploy would create\n{yaml.safe_dump(body, sort_keys=False)}"
        )
        return {"dry_run": True, "endpoint_name": name, "endpoint_kind": KIND}
    call.checkpoint({"endpoint_name": name, "endpoint_kind": KIND})
    current = _settled(ctx, name)  # an interrupted create goes on in Azure: wait for it
    if current is None or _state(current) == "failed":
        endpoints = azure(ctx).workspace.serverless_endpoints
        wait_for(
            ctx, lambda: endpoints.begin_create_or_update(entity), f"creating serverless endpoint {name}"
        )
        current = _get(ctx, name)
    else:
        ctx.ui.info(f"  serverless endpoint {name} exists ({status_text(current.provisioning_state)})")
    state = _state(current) if current is not None else "gone"
    if state != "succeeded":
        raise StageFailed(
            f"serverless endpoint {name} is {state}",
            hint="`ftctl teardown` deletes it; `ftctl deploy --force` creates it again",
        )
    ctx.ui.info(
        f"  serverless endpoint {name} ready: {current.scoring_uri} (key auth; the key stays in Azure)"
    )
    return {
        "endpoint_name": name,
        "endpoint_kind": KIND,
        "deployment_name": None,
        "scoring_uri": str(current.scoring_uri),
        "auth_mode": "key",
        "model_id": model_id,
        "model_uri": registered.model_uri,
        "model_version": registered.version,
        "expires_at": expires_at(ctx.cfg.deploy.ttl),  # the cost guard, as on the pipeline route
    }


def endpoint(ctx: Context, outputs: dict[str, Any]) -> Endpoint:
    """The recorded serverless endpoint for `ftctl credentials` / `chat` / `score`: its URI read back
    from Azure ML, its key from get_keys (never recorded)."""
    from ftctl.backends.azureml.hooks import SERVING, _model_of
    from ftctl.chat import Endpoint

    name = str(outputs["endpoint_name"])
    found = _get(ctx, name)
    if found is None:
        raise UsageError(
            f"the serverless endpoint {name} no longer exists in the workspace (it was torn down or deleted)",
            hint="run `ftctl deploy`",
        )
    if _state(found) not in SERVING or not found.scoring_uri:
        raise UsageError(
            f"the serverless endpoint {name} is not serving (provisioning state {_state(found)})",
            hint="run `ftctl deploy`",
        )
    with calling(f"reading the keys of serverless endpoint {name}"):
        keys = azure(ctx).workspace.serverless_endpoints.get_keys(name)
    key = getattr(keys, "primary_key", None)
    if not key:
        raise StageFailed(f"serverless endpoint {name} has no key", hint="run `ftctl deploy --force`")
    base = str(found.scoring_uri).rstrip("/")
    return Endpoint(
        name=name,
        deployment="",
        url=base,
        scoring_uri=base + CHAT_ROUTE,
        key=str(key),
        key_file="",
        model=_model_of(outputs),
        openai_base_url=f"{base}/v1",
        send=functools.partial(send, transport=azure(ctx).transport),
    )


def chat_body(body: bytes) -> bytes:
    """A scoring request ({"input_data": {"input_string": [conversation], "parameters": ...}}, what
    score, chat and `score --file` build) as the chat completion request the serverless route takes."""
    request = json.loads(body)
    data = request.get("input_data") if isinstance(request, dict) else None
    if not isinstance(data, dict):
        return body  # already a chat completion request (or not one ftctl built): sent as it is
    conversation = data.get("input_string") or []
    if conversation and isinstance(conversation[0], list):
        conversation = conversation[0]  # one conversation (the notebook's list holding one)
    parameters = dict(data.get("parameters") or {})
    chat: dict[str, Any] = {"messages": conversation}
    if "max_new_tokens" in parameters:
        chat["max_tokens"] = parameters["max_new_tokens"]
    for key in ("temperature", "top_p"):
        if key in parameters:
            chat[key] = parameters[key]
    if parameters.get("do_sample") is False:
        chat["temperature"] = 0.0
    return json.dumps(chat).encode("utf-8")


def send(ep: Endpoint, body: bytes, timeout_s: float, transport: Any = None) -> Reply:
    """POST to the chat completions route with the key as the example sends it (`Authorization: <key>`)."""
    from ftctl.backends.azureml import hooks

    return hooks.send(ep, chat_body(body), timeout_s, transport=transport, headers={"Authorization": ep.key})
