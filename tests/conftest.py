"""Shared fixtures: an isolated working directory and a CliRunner that invokes ftctl in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ftctl.cli.app import app
from ftctl.cli.common import BackendOptions


class Ftctl:
    """Runs `ftctl ...` in-process against a workspace in a temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workspace = root / ".ftctl"
        self.runner = CliRunner()
        # Injected into the backend's handles, as an embedding caller would (the fake Azure ML service).
        self.backend_options: dict[str, Any] = {}

    def invoke(self, argv: list[str], input: str | None = None) -> Any:
        return self.runner.invoke(app, argv, input=input, obj=BackendOptions(self.backend_options))

    def __call__(self, *args: str, code: int | None = 0) -> Any:
        result = self.invoke(["--workspace", str(self.workspace), *args])
        if code is not None:
            assert result.exit_code == code, (
                f"ftctl {' '.join(args)} exited {result.exit_code}, wanted {code}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n{result.exception!r}"
            )
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self("--json", *args, code=code).stdout)

    def status(self) -> dict[str, dict[str, Any]]:
        return {stage["name"]: stage for stage in self.json("status")["stages"]}

    def state(self) -> dict[str, Any]:
        return json.loads((self.workspace / "state.json").read_text())


@pytest.fixture
def ftctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ftctl:
    for name in list(__import__("os").environ):
        if name.startswith("FTCTL_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return Ftctl(tmp_path)
