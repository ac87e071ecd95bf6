"""The command lines launch_command builds for the detached training job (no GPU needed)."""

from __future__ import annotations

import json

import pytest

from ftctl.backends.local.launch import (
    DEEPSPEED_CONFIG_NAME,
    deepspeed_config,
    launch_command,
    write_deepspeed_config,
)
from ftctl.errors import UsageError

TORCHRUN = ["py", "-m", "torch.distributed.run", "--standalone"]
TRAINER = ["-m", "ftctl.backends.local.trainer"]


def test_one_gpu_or_none_runs_a_single_process(tmp_path):
    for gpus in (0, 1):
        cmd = launch_command(
            tmp_path, num_gpus=gpus, apply_deepspeed=True, deepspeed_stage=2, python="/opt/py/bin/python"
        )
        assert cmd == ["/opt/py/bin/python", "-m", "ftctl.backends.local.trainer", str(tmp_path)]


def test_several_gpus_use_torchrun_from_the_same_interpreter(tmp_path):
    cmd = launch_command(tmp_path, num_gpus=4, apply_deepspeed=False, deepspeed_stage=2, python="py")
    assert cmd == [*TORCHRUN, "--nproc-per-node=4", *TRAINER, str(tmp_path)]


def test_deepspeed_adds_the_zero_stage_to_the_trainer_arguments(tmp_path):
    cmd = launch_command(tmp_path, num_gpus=2, apply_deepspeed=True, deepspeed_stage=3, python="py")
    assert cmd == [*TORCHRUN, "--nproc-per-node=2", *TRAINER, str(tmp_path), "--deepspeed-stage", "3"]
    # ZeRO-2 unless told otherwise.
    assert launch_command(tmp_path, num_gpus=2, apply_deepspeed=True)[-2:] == ["--deepspeed-stage", "2"]


def test_building_a_command_writes_nothing(tmp_path):
    job_dir = tmp_path / "not-created-yet"
    launch_command(job_dir, num_gpus=8, apply_deepspeed=True, deepspeed_stage=2)
    assert not job_dir.exists()


def test_an_unknown_zero_stage_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="deepspeed_stage"):
        launch_command(tmp_path, num_gpus=2, apply_deepspeed=True, deepspeed_stage=4)
    with pytest.raises(UsageError):
        deepspeed_config(0)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_the_deepspeed_config_leaves_batch_and_precision_to_the_trainer(tmp_path, stage):
    path = write_deepspeed_config(tmp_path, stage)
    assert path == tmp_path / DEEPSPEED_CONFIG_NAME
    config = json.loads(path.read_text())
    assert config == deepspeed_config(stage)
    assert config["zero_optimization"]["stage"] == stage
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps"):
        assert config[key] == "auto"
    assert config["bf16"] == {"enabled": "auto"} and config["fp16"] == {"enabled": "auto"}
    if stage == 3:
        # The saved model must be whole, not one rank's shard.
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_the_trainer_accepts_the_stage_flag():
    from ftctl.backends.local import trainer

    with pytest.raises(SystemExit):
        trainer.main(["job", "--deepspeed-stage", "5"])
