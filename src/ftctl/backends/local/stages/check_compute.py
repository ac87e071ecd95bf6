"""check-compute: find the devices, choose device and precision, apply the allow/deny lists.

The notebook checks the cluster's VM size against the model's finetune allow-list (case-insensitive)
and, when the model has none, against a deny list of old GPU sizes. Locally the "size" is the device
name: the GPU's name (e.g. "NVIDIA H100 80GB HBM3") or "cpu".
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from ftctl.errors import UsageError
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_inputs as inputs
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import check_lists

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


# What a Linux machine has where torch.cuda can see a GPU: NVIDIA's driver nodes, ROCm's kernel driver,
# WSL2's GPU paravirtualisation. Without any of them there is no GPU to find, and no need to import torch
# (1.5 s) to say so.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def no_gpu_possible() -> bool:
    """True when this is Linux with none of GPU_DEVICE_NODES (elsewhere, torch is asked)."""
    import sys

    return sys.platform == "linux" and not any(os.path.exists(node) for node in GPU_DEVICE_NODES)


def detect() -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    found: dict[str, Any] = {"gpus": [], "cpu_cores": cores, "ram_gib": round(ram, 1)}
    if no_gpu_possible():
        from importlib import metadata

        with contextlib.suppress(metadata.PackageNotFoundError):  # else the import below says it
            return {**found, "torch_version": metadata.version("torch")}
    import torch

    gpus = found["gpus"]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "bf16": bool(torch.cuda.is_bf16_supported()),
                }
            )
    return {**found, "torch_version": torch.__version__}


def choose(found: dict[str, Any], device: str, num_gpus: int | None, precision: str) -> dict[str, Any]:
    gpus = found["gpus"]
    if device == "cuda" and not gpus:
        raise UsageError(
            "compute.device is cuda, but no CUDA device is visible", hint="set compute.device=cpu"
        )
    use_gpu = bool(gpus) and device != "cpu"
    if use_gpu:
        if num_gpus is not None and num_gpus > len(gpus):
            raise UsageError(f"compute.num_gpus is {num_gpus}, but only {len(gpus)} GPUs are visible")
        count = len(gpus) if num_gpus is None else max(num_gpus, 1)
        if precision == "auto":
            precision = "bf16" if all(g["bf16"] for g in gpus[:count]) else "16"
        return {"device": "cuda", "size": gpus[0]["name"], "gpus_per_node": count, "precision": precision}
    if precision in ("16", "bf16"):
        raise UsageError(f"finetune.precision {precision} needs a GPU; on CPU use 32 (or auto)")
    return {"device": "cpu", "size": "cpu", "gpus_per_node": 0, "precision": "32"}


def run(ctx: Context, call: StageCall) -> Outputs:
    cfg = ctx.cfg
    found = detect()
    chosen = choose(found, cfg.compute.device, cfg.compute.num_gpus, cfg.finetune.precision)
    model_allows = call.upstream.pick_model.finetune_compute_allow_list
    allow, source = cfg.compute.allow_list, "compute.allow_list"
    if not allow and model_allows:
        allow, source = model_allows, "the model's finetune_compute_allow_list"
    check_lists(chosen["size"], allow, cfg.compute.deny_list, source)
    if found["gpus"]:
        for gpu in found["gpus"]:
            ctx.ui.info(f"  GPU {gpu['index']}: {gpu['name']}, {gpu['memory_gib']} GiB")
    else:
        ctx.ui.info(f"  no GPU; {found['cpu_cores']} CPU cores, {found['ram_gib']} GiB RAM")
    ctx.ui.info(
        f"  using {chosen['device']} ({chosen['gpus_per_node']} GPUs), precision {chosen['precision']}"
    )
    return {**chosen, **found, "allow_list": allow, "name": cfg.compute.name}


def summary(outputs: dict[str, Any]) -> str:
    """ "cpu, 2 cores, fp32" or "cuda, 4 GPUs (NVIDIA H100 80GB HBM3), bf16"."""
    precision = {"32": "fp32", "16": "fp16"}.get(str(outputs.get("precision")), outputs.get("precision"))
    if outputs.get("device") == "cuda":
        gpus = outputs.get("gpus_per_node")
        return f"cuda, {gpus} GPU{'' if gpus == 1 else 's'} ({outputs.get('size')}), {precision}"
    return f"cpu, {outputs.get('cpu_cores')} cores, {precision}"


__all__ = ["alive", "check_lists", "inputs", "output_files", "retire", "run", "summary"]
