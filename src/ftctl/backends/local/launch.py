"""The command line that runs a local training job (detached by the job runner).

One GPU or none: a single process, `python -m ftctl.backends.local.trainer JOB_DIR`.
Several GPUs: torchrun, one process per GPU with DistributedDataParallel:
`python -m torch.distributed.run --standalone --nproc-per-node N -m ftctl.backends.local.trainer JOB_DIR`,
plus `--deepspeed-stage S` with DeepSpeed. The trainer then builds the DeepSpeed config
(`deepspeed_config(S)`: ZeRO stage S, batch sizes and precision left to the transformers Trainer as
"auto"), hands it to the Trainer and writes a copy to JOB_DIR/deepspeed_config.json. DeepSpeed itself
must be installed (`pip install deepspeed`); the trainer says so when it is not.

launch_command writes nothing: the job folder need not exist yet. torchrun runs as a module of the
same interpreter, so no PATH lookup is involved.
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
    """Write deepspeed_config(stage) to job_dir/deepspeed_config.json (the trainer's record)."""
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
    """The argv that runs the training job in job_dir (which must hold spec.json when it runs).

    DeepSpeed applies only with more than one GPU; an invalid stage is a UsageError.
    """
    job_dir = Path(job_dir)
    if num_gpus <= 1:
        return [python, "-m", TRAINER_MODULE, str(job_dir)]
    cmd = [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={int(num_gpus)}",
        "-m",
        TRAINER_MODULE,
        str(job_dir),
    ]
    if apply_deepspeed:
        deepspeed_config(deepspeed_stage)  # validates the stage
        cmd += ["--deepspeed-stage", str(int(deepspeed_stage))]
    return cmd
