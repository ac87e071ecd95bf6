"""check-compute on Azure ML: get the cluster, or create an AmlCompute (size, min/max nodes, idle time from
the `compute` section) with progress, once its fine-tuning nodes fit the region's vCPU quota
(ftctl.backends.azureml.quota: refused with exit 2, naming the allowed sizes that would fit); refuse a
cluster whose provisioning failed; apply the model's finetune allow-list (case-insensitive) or the
notebook's deny list; count the GPUs per node from `compute.list_sizes()`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml import dry_run, quota
from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling, elapsed, show_dry_run, status_text, wait_for
from ftctl.errors import FtctlError, StageFailed, UsageError
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import check_lists

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall

BUSY = {"creating", "updating", "deleting"}


SERVERLESS = "serverless"


def _get_cluster(ctx: Context, name: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    with calling(f"getting compute cluster {name}"):
        try:
            return azure(ctx).workspace.compute.get(name)
        except ResourceNotFoundError:
            return None


def _allow_list(ctx: Context, call: StageCall) -> tuple[list[str] | None, str]:
    if ctx.cfg.compute.allow_list:
        return ctx.cfg.compute.allow_list, "compute.allow_list"
    model = call.upstream.pick_model
    source = model.allow_list_source or "tags"
    return model.finetune_compute_allow_list, f"the model's finetune allow-list ({source})"


def _errors(cluster: Any) -> str:
    errors = getattr(cluster, "provisioning_errors", None) or []
    texts = []
    for error in errors if isinstance(errors, list) else [errors]:
        inner = getattr(error, "error", error)
        message = getattr(inner, "message", None) or (
            inner.get("message") if isinstance(inner, dict) else None
        )
        texts.append(str(message or inner))
    return "; ".join(texts) or "no details given"


def _sizes(ctx: Context) -> list[Any]:
    with calling("listing the VM sizes of the workspace's region"):
        return list(azure(ctx).workspace.compute.list_sizes())


def _gpus(sizes: list[Any], size: str) -> int:
    for vm in sizes:
        if (vm.name or "").lower() == size.lower():
            return int(vm.gpus or 0)
    gpu_sizes = sorted(vm.name for vm in sizes if vm.gpus)
    raise StageFailed(
        f"VM size {size} is not available in the workspace's region",
        hint=f"GPU sizes there: {', '.join(gpu_sizes[:20]) or 'none'}; set compute.size (or compute.name)",
    )


def _check_quota(ctx: Context, sizes: list[Any], allow: list[str] | None) -> dict[str, Any]:
    """Refuse (exit 2) a new cluster whose fine-tuning nodes do not fit the region's vCPU quota, naming
    the allowed sizes that would; what was checked, for the outputs."""
    cfg = ctx.cfg.compute
    try:
        with calling("reading the Azure ML quota of the workspace's region"):
            usages = list(azure(ctx).workspace.compute.list_usage())
    except FtctlError as exc:
        ctx.ui.warn(f"quota not checked: {exc.message}")
        return {"checked": False, "reason": exc.message}
    deny = {s.lower() for s in cfg.deny_list}
    candidates = allow or [vm.name for vm in sizes if vm.gpus and (vm.name or "").lower() not in deny]
    nodes = max(ctx.cfg.finetune.num_nodes, cfg.min_instances, 1)
    verdict = quota.check(cfg.size, sizes, usages, nodes, cfg.max_instances, candidates)
    if not verdict.known:
        ctx.ui.info(f"  quota not checked: {verdict.message}")
        return {"checked": False, "reason": verdict.message}
    if not verdict.ok:
        where = "allowed sizes" if allow else "GPU sizes"
        if verdict.alternatives:
            first = verdict.alternatives[0].split(" ", 1)[0]
            hint = (
                f"{where} that would fit: {', '.join(verdict.alternatives)}; pick one with "
                f"--set compute.size={first}, or request more quota (Azure portal > Quotas)"
            )
        else:
            hint = f"none of the {where} fits; request more quota (Azure portal > Quotas)"
        raise UsageError(f"compute cluster {cfg.name} would not fit the quota: {verdict.message}", hint=hint)
    if verdict.warning:
        ctx.ui.warn(verdict.warning)
    ctx.ui.info(f"  quota: {verdict.message}")
    return {"checked": True, "fits": True, "detail": verdict.message}


def _cluster_entity(ctx: Context) -> Any:
    """The AmlCompute that check-compute creates when the cluster does not exist (the `compute` section)."""
    from azure.ai.ml.entities import AmlCompute

    cfg = ctx.cfg.compute
    return AmlCompute(
        name=cfg.name,
        size=cfg.size,
        min_instances=cfg.min_instances,
        max_instances=cfg.max_instances,
        idle_time_before_scale_down=cfg.idle_time_before_scale_down,
    )


def _create_cluster(ctx: Context, call: StageCall, entity: Any) -> Any:
    """Record that ftctl creates the cluster, then create it, showing progress; the cluster."""
    cfg = ctx.cfg.compute
    call.checkpoint({"name": cfg.name, "created": True})
    return wait_for(
        ctx,
        lambda: azure(ctx).workspace.compute.begin_create_or_update(entity),
        f"creating cluster {cfg.name} ({cfg.size}, {cfg.min_instances}-{cfg.max_instances} nodes)",
    )


def _wait_while_busy(ctx: Context, cluster: Any) -> Any:
    """Poll the cluster while it is being created, updated or deleted; the cluster once it is not."""
    cfg = ctx.cfg.compute
    start = time.monotonic()
    while status_text(cluster.provisioning_state).lower() in BUSY:
        ctx.ui.info(
            f"  ... cluster {cfg.name} is {status_text(cluster.provisioning_state)} ({elapsed(start)})"
        )
        time.sleep(ctx.cfg.poll_interval_s)
        cluster = _get_cluster(ctx, cfg.name)
        if cluster is None:
            raise StageFailed(f"compute cluster {cfg.name} disappeared while it was being provisioned")
    return cluster


def _provisioning_state(ctx: Context, cluster: Any, created: bool) -> str:
    """The cluster's provisioning state; refused when it is Failed (with teardown's hint if ftctl
    created it)."""
    state = status_text(cluster.provisioning_state)
    if state.lower() == "failed":
        raise StageFailed(
            f"compute cluster {ctx.cfg.compute.name} is in provisioning state Failed: {_errors(cluster)}",
            hint=(
                "delete it (Azure ML studio > Compute"
                + (", or `ftctl teardown --compute`" if created else "")
                + ") or set compute.name to another cluster"
            ),
        )
    return state


def _size_in_use(ctx: Context, cluster: Any) -> str:
    """The cluster's VM size (compute.size when it names none), with a warning when it differs from
    compute.size."""
    cfg = ctx.cfg.compute
    size: str = cluster.size or cfg.size
    if size.lower() != cfg.size.lower():
        ctx.ui.warn(f"cluster {cfg.name} exists with size {size} (compute.size is {cfg.size}); using {size}")
    return size


def _gpus_per_vm(ctx: Context, sizes: list[Any] | None, size: str) -> int:
    """The GPUs of one `size` VM (listing the region's sizes unless they were listed already); refused
    when it has none."""
    gpus = _gpus(sizes if sizes is not None else _sizes(ctx), size)
    if gpus < 1:
        raise UsageError(
            f"compute cluster {ctx.cfg.compute.name} ({size}) has no GPU; chat_completion_pipeline "
            "fine-tunes on GPUs",
            hint="set compute.size to a GPU size (and compute.name to a new cluster)",
        )
    return gpus


def _say_cluster(ctx: Context, cluster: Any, size: str, gpus: int, state: str, created: bool) -> None:
    """One line on the cluster in use: size, GPUs per node, node range, state."""
    ctx.ui.info(
        f"  cluster {ctx.cfg.compute.name}: {size}, {gpus} GPU(s) per node, "
        f"{cluster.min_instances}-{cluster.max_instances} nodes, {state}"
        + (" (created by ftctl)" if created else "")
    )


def run(ctx: Context, call: StageCall) -> Outputs:
    if dry_run.offline(call, "pick-model"):
        return dry_run.check_compute(ctx)
    cfg = ctx.cfg.compute
    if cfg.name == SERVERLESS:
        return _serverless(ctx, call)
    recorded = call.recorded
    allow, source = _allow_list(ctx, call)
    cluster = _get_cluster(ctx, cfg.name)
    created = bool(recorded.get("created"))
    sizes: list[Any] | None = None
    quota_report: dict[str, Any] | None = None
    if cluster is None:
        check_lists(cfg.size, allow, cfg.deny_list, source)
        sizes = _sizes(ctx)
        _gpus(sizes, cfg.size)  # a size the region has
        quota_report = _check_quota(ctx, sizes, allow)
        entity = _cluster_entity(ctx)
        if call.options.dry_run:
            show_dry_run(
                ctx, f"compute cluster {cfg.name} does not exist; check-compute would create", entity
            )
            return {
                "dry_run": True,
                "name": cfg.name,
                "size": cfg.size,
                "would_create": True,
                "quota": quota_report,
            }
        cluster = _create_cluster(ctx, call, entity)
        created = True
    elif call.options.dry_run:
        show_dry_run(ctx, f"compute cluster {cfg.name} exists; nothing would be created", cluster)
        return {"dry_run": True, "name": cfg.name, "size": cluster.size, "would_create": False}
    cluster = _wait_while_busy(ctx, cluster)
    state = _provisioning_state(ctx, cluster, created)
    size = _size_in_use(ctx, cluster)
    check_lists(size, allow, cfg.deny_list, source)
    gpus = _gpus_per_vm(ctx, sizes, size)
    gpus_per_node = min(gpus, cfg.num_gpus) if cfg.num_gpus else gpus
    _say_cluster(ctx, cluster, size, gpus, state, created)
    precision = ctx.cfg.finetune.precision
    return {
        "name": cfg.name,
        "id": cluster.id,
        "size": size,
        "created": created,
        "provisioning_state": state,
        "min_instances": cluster.min_instances,
        "max_instances": cluster.max_instances,
        "gpus_per_vm": gpus,
        "gpus_per_node": gpus_per_node,
        "device": "cuda",
        "precision": precision,
        "allow_list": allow,
        "allow_list_source": source if allow else "deny list",
        "quota": quota_report,
    }


def _serverless(ctx: Context, call: StageCall) -> Outputs:
    """compute.name `serverless` on the fine-tuning job route: Azure ML picks and bills the machine for the
    job (create_finetuning_job without `compute`); there is no cluster to find, create or check."""
    route = call.upstream.pick_model.route
    if route != "job":
        raise UsageError(
            f"compute.name: {SERVERLESS} runs only on the fine-tuning job route (this model's route is "
            f"{route})",
            hint="set compute.name to a cluster, or finetune.route: job",
        )
    ctx.ui.info("  serverless compute: Azure ML chooses the machine for the fine-tuning job")
    return {
        "name": SERVERLESS,
        "serverless": True,
        "device": "cuda",
        "precision": ctx.cfg.finetune.precision,
        "created": False,
    }


def summary(outputs: dict[str, Any]) -> str:
    if outputs.get("serverless"):
        return "serverless (the fine-tuning job API chooses the machine)"
    return f"{outputs.get('name')} {outputs.get('size')} x{outputs.get('gpus_per_node')} GPU"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
