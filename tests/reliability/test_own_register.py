"""register is idempotent: an attempt killed after the MLflow registry call, before its outputs were
saved, is found again by the next attempt instead of registering a second version.

register.run runs for real against a workspace's MLflow store (a run holding a stand-in mlflow_model
folder); the kill is stood for by an exception raised right after the registry call.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from ftctl.stages.contract import StageCall


class Killed(BaseException):
    pass


def make_ctx(workspace: Path) -> Any:
    from ftctl.config import load_config
    from ftctl.context import Context
    from ftctl.ui import UI

    workspace.mkdir(parents=True, exist_ok=True)
    config = load_config(environ={}, backend="local")
    return Context(workspace=workspace, config=config, ui=UI(err=io.StringIO()))


def test_a_register_killed_after_the_registry_call_registers_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftctl.backends.local.backend import local
    from ftctl.backends.local.stages import register

    ctx = make_ctx(tmp_path / "ws")
    ws = local(ctx)
    ws.create()
    mlflow = ws.mlflow
    experiment = ws.ensure_experiment("chat_completion_tiny")
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(model), artifact_path="mlflow_model")
    state = {
        "stages": {
            "pick-model": {"status": "succeeded", "outputs": {"name": "tiny"}},
            "submit": {
                "status": "succeeded",
                "outputs": {"job_id": "job-1", "mlflow_run_id": run.info.run_id},
            },
        }
    }
    saved: dict[str, Any] = {}
    client_class = mlflow.MlflowClient
    real_update = client_class.update_model_version

    def killed_after_registering(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise Killed  # the version exists now; the stage's outputs were not saved

    monkeypatch.setattr(client_class, "update_model_version", killed_after_registering)
    with pytest.raises(Killed):
        register.run(ctx, StageCall("register", state, checkpoint=saved.update))
    monkeypatch.setattr(client_class, "update_model_version", real_update)

    # The next `ftctl register` re-attaches with what the killed attempt saved.
    outputs = register.run(ctx, StageCall("register", state, recorded=dict(saved), checkpoint=saved.update))
    versions = client_class().search_model_versions(f"name = '{outputs['model_name']}'")
    assert [str(v.version) for v in versions] == ["1"], "the re-run registered a second version"
    assert outputs["version"] == "1" and outputs["model_uri"] == "models:/tiny-ultrachat-200k/1"
    assert "interrupted attempt" in ctx.ui.err.getvalue()

    # A forced run (nothing recorded) is a new registration, as asked.
    again = register.run(ctx, StageCall("register", state, checkpoint=saved.update))
    assert again["version"] == "2"
