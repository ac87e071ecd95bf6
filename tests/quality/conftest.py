"""Fixtures for the plan / evaluate / gate tests: the session's prepared workspace (auth .. prepare-data
on the shipped sample) with the plan tests' settings, and its trained one (tests/conftest.py), each
copied for a test that changes it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from harness import CONFIG_NAME, Ftctl

# The plan tests' settings (short rows, a handful of steps, a small evaluation set): their expected
# figures (6 steps, effective batch 4, rows of 128 tokens) are computed for these.
CONFIG = """\
finetune:
  max_steps: 6
  logging_steps: 1
  max_seq_length: 128
  per_device_train_batch_size: 4
  max_eval_samples: 16
plan:
  calibration_steps: 3
"""


@pytest.fixture(scope="session")
def prepared(prepared_ws: Ftctl, tmp_path_factory: pytest.TempPathFactory) -> Ftctl:
    """The session's prepared workspace (auth .. prepare-data) with the plan tests' settings (CONFIG);
    tests copy it."""
    dest = tmp_path_factory.mktemp("quality-prepared") / "ws"
    ws = prepared_ws.copy(dest)
    (dest / CONFIG_NAME).write_text(CONFIG)
    return ws


@pytest.fixture
def scratch(prepared: Ftctl, tmp_path: Path) -> Ftctl:
    return prepared.copy(tmp_path / "ws")


@pytest.fixture
def trained(trained_ws: Ftctl) -> Ftctl:
    """The session's trained and registered workspace (the fast profile); tests copy it."""
    return trained_ws


@pytest.fixture
def template_model(tmp_path: Path) -> Callable[[str, str], Path]:
    """Makes a copy of the built-in model with another chat template."""
    from ftctl.models.layout import shipped_model_dir

    def make(name: str, template: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(shipped_model_dir(), dest)
        config = json.loads((dest / "tokenizer_config.json").read_text())
        config["chat_template"] = template
        (dest / "tokenizer_config.json").write_text(json.dumps(config))
        return dest

    return make
