"""The command line that runs a local training job (detached by the job runner).

One GPU or none: a single process, `python -m ftctl.backends.local.trainer JOB_DIR`.
Several GPUs: torchrun (`python -m torch.distributed.run --standalone --nproc-per-node N -m
ftctl.backends.local.trainer JOB_DIR`), one process per GPU with DistributedDataParallel; with
DeepSpeed, launch_command also writes JOB_DIR/deepspeed_config.json (ZeRO stage 1, 2 or 3, batch sizes
and precision left to the transformers Trainer as "auto"), which the trainer hands to the Trainer when
it runs under more than one process. DeepSpeed itself must then be installed (`pip install deepspeed`).

torchrun is run as a module of the same interpreter, so no PATH lookup is involved.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ftctl.errors import UsageError

TRAINER_MODULE = "ftctl.backends.local.trainer"
DEEPSPEED_CONFIG_NAME = "deepspeed_config.json"  # the trainer looks for the same name
DEFAULT_ZERO_STAGE = 2


def deepspeed_config(stage: int = DEFAULT_ZERO_STAGE) -> dict[str, Any]:
    """A DeepSpeed config for the transformers Trainer: ZeRO `stage`, everything else "auto"."""
    if stage not in (1, 2, 3):
        raise UsageError(f"deepspeed_stage must be 1, 2 or 3 (got {stage!r})")
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        zero.update(allgather_partitions=True, allgather_bucket_size=200_000_000, reduce_scatter=True)
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_max_live_parameters=1_000_000_000,
            stage3_max_reuse_distance=1_000_000_000,
            # Gather the full weights when saving, so the saved model is usable on its own.
            stage3_gather_16bit_weights_on_model_save=True,
        )
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "fp16": {"enabled": "auto"},
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": False,
    }


def write_deepspeed_config(job_dir: Path, stage: int = DEFAULT_ZERO_STAGE) -> Path:
    path = Path(job_dir) / DEEPSPEED_CONFIG_NAME
    path.write_text(json.dumps(deepspeed_config(stage), indent=2) + "\n", encoding="utf-8")
    return path


def launch_command(
    job_dir: Path,
    *,
    num_gpus: int,
    apply_deepspeed: bool,
    deepspeed_stage: int = DEFAULT_ZERO_STAGE,
    python: str = sys.executable,
) -> list[str]:
    """The argv that runs the training job in job_dir (which must hold spec.json).

    With num_gpus > 1 and apply_deepspeed, writes job_dir/deepspeed_config.json; otherwise removes a
    stale one, so the trainer never picks up DeepSpeed by accident.
    """
    job_dir = Path(job_dir)
    ds_path = job_dir / DEEPSPEED_CONFIG_NAME
    if num_gpus <= 1:
        ds_path.unlink(missing_ok=True)
        return [python, "-m", TRAINER_MODULE, str(job_dir)]
    if apply_deepspeed:
        write_deepspeed_config(job_dir, deepspeed_stage)
    else:
        ds_path.unlink(missing_ok=True)
    return [
        python, "-m", "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={int(num_gpus)}",
        "-m", TRAINER_MODULE,
        str(job_dir),
    ]
