from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.config import Config, load_config
from ftctl.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_file_equals_builtin_defaults() -> None:
    loaded = load_config(ROOT / "configs" / "local-quickstart.yaml", environ={})
    assert loaded.values == Config()


def test_azureml_config_carries_the_notebook_values() -> None:
    cfg = load_config(ROOT / "configs" / "azureml-phi3-ultrachat.yaml", environ={}).values
    assert cfg.backend == "azureml"
    assert cfg.finetune.learning_rate == 5e-6
    assert cfg.finetune.num_train_epochs == 3
    assert cfg.data.split_pc == 5
    assert cfg.deploy.request_timeout_ms == 90000


def test_precedence_file_then_env_then_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  learning_rate: 0.1\n  seed: 7\n  lora_r: 4\n")
    env = {"FTCTL_FINETUNE__SEED": "8", "FTCTL_FINETUNE__LORA_R": "5"}
    loaded = load_config(path, ["finetune.lora_r=6"], environ=env)
    assert loaded.values.finetune.learning_rate == 0.1
    assert loaded.values.finetune.seed == 8
    assert loaded.values.finetune.lora_r == 6
    assert loaded.explicit == {"finetune.seed", "finetune.lora_r"}


def test_set_accepts_exponent_floats() -> None:
    assert (
        load_config(None, ["finetune.learning_rate=1e-4"], environ={}).values.finetune.learning_rate == 1e-4
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("finetune:\n  learnin_rate: 0.1\n", "c.yaml:2: finetune.learnin_rate: unknown key"),
        (
            "finetune:\n  seed: 1\n  learning_rate: fast\n",
            "c.yaml:3: finetune.learning_rate: Input should be",
        ),
        ("data:\n  split_pc: 0\n", "c.yaml:2: data.split_pc: Input should be greater than 0"),
        ("deploy:\n  port: 70000\n", "c.yaml:2: deploy.port"),
        ("bogus: 1\n", "c.yaml:1: bogus: unknown key"),
        ("finetune: [1, 2]\n", "finetune"),
        ("- a list\n", "the top level must be a mapping"),
        ("finetune:\n  seed: [\n", "c.yaml:3"),
    ],
)
def test_bad_files_name_the_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert expected in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("finetune.nope=1", "finetune.nope (from --set): unknown key"),
        ("finetune.learning_rate=-1", "finetune.learning_rate (from --set): Input should be greater than 0"),
        ("no-equals-sign", "expected key.path=value"),
        ("finetune..x=1", "expected key.path=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override], environ={})
    assert expected in str(info.value)


def test_bad_env_override_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"FTCTL_SCORE__TOP_P": "2"})
    assert "score.top_p (from FTCTL_SCORE__TOP_P)" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_select_takes_sections_and_exact_keys() -> None:
    loaded = load_config(None, environ={})
    picked = loaded.select(["score", "data.score_split"])
    assert picked["data.score_split"] == "test_gen"
    assert picked["score.max_new_tokens"] == 200
    assert not any(key.startswith("data.") and key != "data.score_split" for key in picked)


def test_config_imports_no_data_preparation_module() -> None:
    code = (
        "import sys, ftctl.config, ftctl.constants\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('ftctl.data'))\n"
        "assert not loaded, loaded\n"
        "assert ftctl.config.DataSection().dataset == ftctl.constants.SAMPLE_DATASET\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_the_data_layer_uses_the_same_sample_dataset_name() -> None:
    from ftctl.constants import SAMPLE_DATASET
    from ftctl.data import prepare

    assert prepare.SAMPLE_DATASET is SAMPLE_DATASET


@pytest.mark.parametrize("given", ["32", 32, "16", 16])
def test_precision_given_as_a_number_means_the_word(given) -> None:
    """`--set finetune.precision=32` (and YAML's `precision: 16`) arrive as numbers; they are the words,
    not an error (found planning an Azure ML run)."""
    from ftctl.config import FinetuneSection

    assert FinetuneSection(precision=given).precision == str(given)
    with pytest.raises(ValueError):
        FinetuneSection(precision=8)
