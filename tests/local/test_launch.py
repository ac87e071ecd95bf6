"""The command lines launch_command builds for the detached training job (no GPU needed)."""

from __future__ import annotations

import json

import pytest

from ftctl.backends.local.launch import DEEPSPEED_CONFIG_NAME, deepspeed_config, launch_command
from ftctl.errors import UsageError


def test_one_gpu_or_none_runs_a_single_process(tmp_path):
    for gpus in (0, 1):
        cmd = launch_command(tmp_path, num_gpus=gpus, apply_deepspeed=True, deepspeed_stage=2,
                             python="/opt/py/bin/python")
        assert cmd == ["/opt/py/bin/python", "-m", "ftctl.backends.local.trainer", str(tmp_path)]
    # DeepSpeed only matters across processes: no config is written for one.
    assert not (tmp_path / DEEPSPEED_CONFIG_NAME).exists()


def test_several_gpus_use_torchrun_from_the_same_interpreter(tmp_path):
    cmd = launch_command(tmp_path, num_gpus=4, apply_deepspeed=False, deepspeed_stage=2, python="py")
    assert cmd == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                   "-m", "ftctl.backends.local.trainer", str(tmp_path)]
    assert not (tmp_path / DEEPSPEED_CONFIG_NAME).exists()


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_writes_a_zero_config_into_the_job_folder(tmp_path, stage):
    cmd = launch_command(tmp_path, num_gpus=2, apply_deepspeed=True, deepspeed_stage=stage)
    assert "--nproc-per-node=2" in cmd and cmd[-1] == str(tmp_path)
    config = json.loads((tmp_path / DEEPSPEED_CONFIG_NAME).read_text())
    assert config["zero_optimization"]["stage"] == stage
    # Batch sizes and precision are left for the transformers Trainer to fill in.
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps"):
        assert config[key] == "auto"
    assert config["bf16"] == {"enabled": "auto"} and config["fp16"] == {"enabled": "auto"}
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_zero_2_is_the_default_stage(tmp_path):
    launch_command(tmp_path, num_gpus=2, apply_deepspeed=True)
    config = json.loads((tmp_path / DEEPSPEED_CONFIG_NAME).read_text())
    assert config["zero_optimization"]["stage"] == 2


def test_a_stale_deepspeed_config_is_removed_when_deepspeed_is_off(tmp_path):
    launch_command(tmp_path, num_gpus=2, apply_deepspeed=True, deepspeed_stage=3)
    assert (tmp_path / DEEPSPEED_CONFIG_NAME).exists()
    launch_command(tmp_path, num_gpus=2, apply_deepspeed=False, deepspeed_stage=3)
    assert not (tmp_path / DEEPSPEED_CONFIG_NAME).exists()


def test_an_unknown_zero_stage_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="deepspeed_stage"):
        launch_command(tmp_path, num_gpus=2, apply_deepspeed=True, deepspeed_stage=4)
    with pytest.raises(UsageError):
        deepspeed_config(0)
