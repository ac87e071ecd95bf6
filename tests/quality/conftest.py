"""Fixtures for the plan / evaluate / gate tests: a workspace prepared once per session (auth ..
prepare-data on the shipped sample), copied for each test that changes it, and helpers to run ftctl
in-process against it with small settings."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ftctl.cli.app import app

# Small, fast settings: short rows, a handful of steps, a small evaluation set.
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


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.workspace = root / ".ftctl"
        self.config = root / "ftctl-test.yaml"
        if not self.config.exists():
            self.config.write_text(CONFIG)

    def __call__(self, *args: str, code: int | None = 0) -> Any:
        clean = {name: None for name in os.environ if name.startswith("FTCTL_")}
        result = CliRunner().invoke(
            app, ["--workspace", str(self.workspace), "--config", str(self.config), *args], env=clean
        )
        if code is not None:
            assert result.exit_code == code, (
                f"ftctl {' '.join(args)} exited {result.exit_code}, wanted {code}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n{result.exception!r}"
            )
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self("--json", *args, code=code).stdout)

    def state(self) -> dict[str, Any]:
        return json.loads((self.workspace / "state.json").read_text())

    def outputs(self, stage: str) -> dict[str, Any]:
        return dict(self.state()["stages"][stage]["outputs"])

    def copy(self, dest: Path) -> Workspace:
        shutil.copytree(self.root, dest, ignore=shutil.ignore_patterns("lock"))
        return Workspace(dest)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """auth .. prepare-data, once; tests copy it."""
    ws = Workspace(tmp_path_factory.mktemp("quality-prepared"))
    ws("run", "--to", "prepare-data")
    return ws


@pytest.fixture
def scratch(prepared: Workspace, tmp_path: Path) -> Workspace:
    return prepared.copy(tmp_path / "ws")


@pytest.fixture(scope="session")
def trained(prepared: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A copy of `prepared` trained (the test config: 6 steps) and registered once; tests copy it.
    A copy reads the original's job and model files (their paths are in its state); it must not
    change them."""
    ws = prepared.copy(tmp_path_factory.mktemp("quality-trained") / "ws")
    ws("submit")
    ws("register")
    return ws


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
