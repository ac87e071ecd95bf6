"""pick-model on Azure ML: the base model from the registry (`models.get(name, label=...)` or a pinned
version), with what later stages need from it: compute allow-lists and model-specific finetune defaults
(from its tags, as the notebook reads them, or from its system_metadata) and its lifecycle (archived,
deprecated, retired: a clear warning naming `ftctl pick-model --list`)."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml import dry_run
from ftctl.backends.azureml import lifecycle as life
from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling, status_text
from ftctl.backends.azureml.metadata import (
    MAAS_REGIONS_TAG,
    compute_lists,
    finetune_route,
    inference_tasks,
    is_chat_completion,
    is_finetunable,
    lifecycle,
    model_defaults,
    recommended_skus,
    tasks,
)
from ftctl.errors import FtctlError
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall

LIST_HINT = (
    "list the chat-completion models of the registry with `ftctl pick-model --list`, then set model.name"
)


def _raw_properties(ctx: Context, name: str, version: str) -> dict[str, Any]:
    body = azure(ctx).raw.latest(f"/models/{name}/versions/{version}")
    props = body.get("properties") if isinstance(body, dict) else None
    return props if isinstance(props, dict) else {}


def _latest_body(ctx: Context, name: str) -> dict[str, Any] | None:
    """The raw body of `name`'s latest version in the registry (None when it cannot be read)."""
    try:
        with calling(f"getting model {name} (label latest)"):
            model = azure(ctx).registry.models.get(name, label="latest")
    except FtctlError:
        return None
    body = azure(ctx).raw.latest(f"/models/{name}/versions/{model.version}")
    return body if isinstance(body, dict) else None


def _get_model(ctx: Context) -> Any:
    """The base model from the registry: the pinned model.revision, else the one with model.label. When
    it cannot be got, the error's hint names the family's fine-tunable successors (or how to list the
    models)."""
    cfg = ctx.cfg.model
    registry_name = ctx.cfg.azureml.registry_name
    registry = azure(ctx).registry
    name = cfg.name
    what = f"{name} version {cfg.revision}" if cfg.revision else f"{name} (label {cfg.label})"
    try:
        with calling(
            f"getting model {what} from registry {registry_name!r}",
            not_found=f"no model {what} in registry {registry_name!r}",
        ):
            if cfg.revision:
                return registry.models.get(name, version=str(cfg.revision))
            return registry.models.get(name, label=cfg.label)
    except FtctlError as exc:
        found = _successors(ctx, name)
        exc.hint = exc.hint or (_successor_hint(ctx, found) if found else LIST_HINT)
        raise


def _say_model(
    ctx: Context,
    model: Any,
    version: str,
    lists: tuple[list[str] | None, list[str] | None, str],
    defaults: tuple[dict[str, Any], str],
    notes: list[str],
) -> None:
    """What was read from the model: its id, its compute allow-lists (`lists`: finetune, inference and
    where they come from), its finetune defaults (`defaults`: the values and where they come from) and
    a warning for each lifecycle note."""
    finetune_allow, inference_allow, lists_source = lists
    values, defaults_source = defaults
    ctx.ui.info(f"  {model.name} version {version}: {model.id}")
    if finetune_allow:
        ctx.ui.info(f"  finetune allow-list ({lists_source}): {', '.join(finetune_allow)}")
    if inference_allow:
        ctx.ui.info(f"  inference allow-list ({lists_source}): {', '.join(inference_allow)}")
    if values:
        ctx.ui.info(f"  model-specific finetune defaults ({defaults_source}): {values}")
    for note in notes:
        ctx.ui.warn(f"{model.name} {version}: {note}")


def run(ctx: Context, call: StageCall) -> Outputs:
    if dry_run.offline(call, "auth"):
        return dry_run.pick_model(ctx)
    cfg = ctx.cfg.model
    registry_name = ctx.cfg.azureml.registry_name
    model = _get_model(ctx)
    version = str(model.version)
    raw = _raw_properties(ctx, cfg.name, version)
    tags = dict(model.tags or {})
    system_metadata = (
        getattr(model, "_system_metadata", None) or raw.get("systemMetadata") or raw.get("system_metadata")
    )
    finetune_allow, inference_allow, lists_source = compute_lists(tags, system_metadata)
    defaults, defaults_source = model_defaults(tags, system_metadata)
    archived = bool(raw.get("isArchived"))
    stage = getattr(model, "stage", None)
    today = date.today()
    notes = lifecycle(tags, archived, stage, today, system_metadata)

    lists = (finetune_allow, inference_allow, lists_source)
    _say_model(ctx, model, version, lists, (defaults, defaults_source), notes)
    finetunable = not archived and is_finetunable(tags, raw.get("properties"), today, system_metadata)
    found = _successors(ctx, model.name) if not finetunable else []
    known = {"name": model.name, "version": version, "archived": archived, "registry": registry_name}
    life.refuse_retired(known, system_metadata, tags, found, today)
    recommended = recommended_skus(system_metadata, "inference")
    size, size_source = life.deploy_size(
        ctx.cfg.deploy.instance_type, inference_allow, recommended, required=False
    )
    if size and size_source != "deploy.instance_type":
        ctx.ui.info(f"  deploy size: {size} ({size_source}; set deploy.instance_type to choose another)")
    if not is_chat_completion(tags, raw.get("properties"), system_metadata):
        ctx.ui.warn(
            f"{model.name} does not say it supports chat-completion (its task tag is {tags.get('task')!r})"
        )
    elif not finetunable and not notes:
        ctx.ui.warn(
            f"{model.name} {version} does not say it can be fine-tuned (no finetuning-tasks property)"
        )
    route, route_source, regions = _route(ctx, tags, system_metadata)
    successors: list[str] = found
    if notes or not finetunable:
        successors = found or _successors(ctx, model.name)
        ctx.ui.warn(_successor_hint(ctx, successors) if successors else LIST_HINT)
    return {
        "name": model.name,
        "version": version,
        "id": model.id,
        "registry": registry_name,
        "label": None if cfg.revision else cfg.label,
        "task": tags.get("task") or ",".join(inference_tasks(tags, system_metadata)) or None,
        "finetuning_tasks": tasks(tags, raw.get("properties"), system_metadata),
        "stage": status_text(stage) if stage else None,
        "archived": archived,
        "lifecycle": notes,
        "finetunable": finetunable,
        "successors": successors,
        "finetune_compute_allow_list": finetune_allow,
        "inference_compute_allow_list": inference_allow,
        "allow_list_source": lists_source,
        "model_specific_defaults": defaults,
        "defaults_source": defaults_source,
        "inference_recommended_skus": recommended,
        "finetune_recommended_skus": recommended_skus(system_metadata, "finetune"),
        "deploy_instance_type": size,
        "deploy_instance_type_source": size_source,
        "content_hash": model.id,  # the asset id pins the weights (ftctl.stages.register lineage tags)
        "route": route,
        "route_source": route_source,
        "maas_deploy_regions": regions,
    }


def _route(ctx: Context, tags: dict[str, Any], system_metadata: Any) -> tuple[str, str, list[str]]:
    """finetune.route resolved: the configured route, or with `auto` the one the model advertises
    (metadata.finetune_route); where it came from; the regions its serverless fine-tuned models deploy to."""
    advertised, regions = finetune_route(tags, system_metadata)
    chosen = ctx.cfg.finetune.route
    if chosen == "auto":
        why = f"the model's {MAAS_REGIONS_TAG} tag" if regions else "no fine-tuning job API advertised"
        route, source = advertised, f"auto: {why}"
    else:
        route, source = chosen, "finetune.route"
        if chosen == "job" and not regions:
            ctx.ui.warn(
                f"finetune.route is job but {ctx.cfg.model.name} does not advertise the fine-tuning job API "
                f"(no {MAAS_REGIONS_TAG} tag); Azure ML may refuse the job"
            )
    where = (
        "the fine-tuning job API, then a serverless endpoint"
        if route == "job"
        else "chat_completion_pipeline"
    )
    ctx.ui.info(f"  fine-tuning route: {route} ({where}; {source})")
    return route, source, regions


def _successors(ctx: Context, name: str) -> list[str]:
    """Fine-tunable chat-completion models of `name`'s family in the registry (not archived, fine-tuning
    not retired), newest generation first, judged from each one's latest version (its system_metadata:
    the model containers no longer carry the task tags); [] when the registry cannot be listed."""
    registry = azure(ctx).registry
    try:
        with calling(f"listing the models of registry {ctx.cfg.azureml.registry_name!r}"):
            names = [c.name for c in registry.models.list()]
    except FtctlError:
        return []
    containers: dict[str, dict[str, Any]] = {n: {"name": n, "properties": {}} for n in names}
    for page in azure(ctx).raw.all("/models"):
        for item in page.get("value") or [] if isinstance(page, dict) else []:
            if isinstance(item, dict) and item.get("name") in containers:
                containers[item["name"]] = item
    return life.successors(name, list(containers.values()), lambda n: _latest_body(ctx, n), date.today())


def _successor_hint(ctx: Context, successors: list[str]) -> str:
    return life.pick_line(ctx.cfg.azureml.registry_name, successors)


def list_models(ctx: Context, show_all: bool = False) -> list[dict[str, Any]]:
    """The registry's models (its model containers): the chat-completion ones, or all with show_all."""
    registry_name = ctx.cfg.azureml.registry_name
    registry = azure(ctx).registry
    with calling(f"listing the models of registry {registry_name!r}"):
        containers = list(registry.models.list())
    raw: dict[str, dict[str, Any]] = {}
    for page in azure(ctx).raw.all("/models"):
        for item in page.get("value") or [] if isinstance(page, dict) else []:
            if isinstance(item, dict) and item.get("name"):
                raw[item["name"]] = item.get("properties") or {}
    rows = []
    for container in containers:
        props = raw.get(container.name, {})
        tags = props.get("tags") or {}
        meta = props.get("systemMetadata") or props.get("system_metadata")
        chat = is_chat_completion(tags, props.get("properties"), meta)
        if not (chat or show_all):
            continue
        rows.append(
            {
                "name": container.name,
                "latest_version": getattr(container, "latest_version", None) or props.get("latestVersion"),
                "task": tags.get("task") or ",".join(inference_tasks(tags, meta)) or None,
                "archived": bool(props.get("isArchived")),
                "finetunable": is_finetunable(tags, props.get("properties"), date.today(), meta),
                "description": (props.get("description") or "").strip().splitlines()[0][:80]
                if props.get("description")
                else "",
            }
        )
    return sorted(rows, key=lambda row: row["name"].lower())


def summary(outputs: dict[str, Any]) -> str:
    text = f"{outputs.get('name')} v{outputs.get('version')}"
    return f"{text} (archived)" if outputs.get("archived") else text


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
