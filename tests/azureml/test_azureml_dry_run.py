"""A plan without a login: every stage's dry run from the configuration alone (no credentials, no
network, no earlier stages), printed stage by stage with placeholders for what only Azure ML knows, and
nothing recorded."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from ftctl.config import load_config
from ftctl.context import Context
from ftctl.pipeline import Runner
from ftctl.stages.contract import RunOptions
from ftctl.ui import UI

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "azureml-phi4-ultrachat.yaml"
STAGES = [
    "auth",
    "pick-model",
    "check-compute",
    "prepare-data",
    "submit",
    "register",
    "deploy",
    "score",
    "teardown",
]


def _context(
    workspace: Path, *overrides: str, json_mode: bool = False
) -> tuple[Context, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    loaded = load_config(CONFIG, list(overrides), environ={}, backend="azureml")
    return Context(workspace=workspace, config=loaded, ui=UI(json_mode=json_mode, out=out, err=err)), out, err


def dry_run_all(ctx: Context, start: str | None = None, stop: str | None = None) -> list[dict]:
    return Runner(ctx, RunOptions(dry_run=True)).dry_run_many(start, stop)


def _documents(text: str) -> dict[str, dict]:
    """stage -> its plan, from the printed `# <stage>: dry run ...` sections."""
    found = {}
    for part in text.split("\n# ")[0:]:
        header, _, body = part.lstrip("# ").partition("\n")
        found[header.split(":", 1)[0]] = yaml.safe_load(body)
    return found


def test_run_dry_run_plans_every_stage_from_the_config(tmp_path, monkeypatch, azure_env, no_network) -> None:
    monkeypatch.chdir(tmp_path)  # no workspace config.json anywhere up from here
    workspace = tmp_path / ".ftctl"
    ctx, out, err = _context(workspace)
    results = dry_run_all(ctx)
    assert [r["stage"] for r in results] == STAGES
    assert all(r["status"] == "dry run" and r["outputs"]["offline"] for r in results)
    assert not workspace.exists(), "a dry run created the workspace"
    plans = _documents(out.getvalue())
    assert list(plans) == STAGES
    assert "<...>: known only to Azure ML at run time" in out.getvalue().splitlines()[0]

    auth = plans["auth"]
    assert auth["calls"][0].startswith("DefaultAzureCredential().get_token('https://management.azure.com/")
    assert auth["workspace"]["workspace_name"] == "<azureml.workspace_name or AZUREML_WORKSPACE_NAME>"
    assert "no Azure ML workspace configured" in auth["workspace"]["missing_now"]
    model = plans["pick-model"]["model"]
    assert model == {
        "name": "Phi-4",
        "version": "<latest version>",
        "id": "azureml://registries/azureml/models/Phi-4/versions/<latest version>",
    }
    compute = plans["check-compute"]
    assert compute["would_create"]["type"] == "amlcompute"
    assert compute["would_create"]["size"] == "Standard_NC24ads_A100_v4"
    assert compute["gpus_per_node"] == "<GPUs of one Standard_NC24ads_A100_v4>"
    assert plans["prepare-data"]["writes"]["train_sft"] == str(
        workspace / "ultrachat_200k_dataset/train_sft.jsonl"
    )
    job = plans["submit"]["would_create"]
    assert job["name"] == "<job name chosen at submit>"
    assert job["experiment_name"] == "chat_completion_Phi-4"
    assert job["settings"] == {"force_rerun": True, "continue_on_step_failure": False}
    node = job["jobs"]["chat_completion_pipeline"]
    assert node["component"].startswith(
        "azureml://registries/azureml/components/chat_completion_pipeline/labels/latest"
    )
    inputs = node["inputs"]
    assert inputs["mlflow_model_path"]["path"] == model["id"]
    assert inputs["compute_finetune"] == "gpu-cluster-big"
    assert inputs["apply_lora"] == "true" and inputs["apply_deepspeed"] == "true"  # yes/no as strings
    assert inputs["num_train_epochs"] == 3 and inputs["learning_rate"] == 5e-6
    assert inputs["number_of_gpu_to_use_finetuning"] == "<GPUs per node of Standard_NC24ads_A100_v4>"
    assert any("model_specific_defaults" in note for note in plans["submit"]["later_at_submit"])
    model_version = plans["register"]["would_create"]
    assert model_version["type"] == "mlflow_model"
    assert model_version["name"] == "Phi-4-ultrachat-200k"
    assert model_version["version"] == "<timestamp at run time>"
    deploy = plans["deploy"]["would_create"]
    assert deploy["endpoint"]["auth_mode"] == "key"
    # deploy.instance_type is unset: the size comes from the model's metadata, which a dry run does not read.
    assert deploy["deployment"]["instance_type"] == "<the model's recommended inference size>"
    assert deploy["deployment"]["liveness_probe"]["initial_delay"] == 600
    request = plans["score"]["request"]["input_data"]
    assert request["parameters"] == {
        "temperature": 0.6,
        "top_p": 0.9,
        "do_sample": True,
        "max_new_tokens": 200,
    }
    assert "begin_delete(name='ultrachat-phi4-<unix time>')" in plans["teardown"]["calls"][0]
    assert "nothing was recorded" in err.getvalue()


def test_a_workspace_config_json_names_the_workspace(tmp_path, monkeypatch, azure_env, no_network) -> None:
    ids = {"subscription_id": "sub-1", "resource_group": "rg-1", "workspace_name": "ws-1"}
    (tmp_path / "config.json").write_text(json.dumps(ids))
    monkeypatch.chdir(tmp_path)
    ctx, out, _ = _context(tmp_path / ".ftctl", "model.name=Phi-4-mini-instruct", "compute.num_gpus=2")
    [auth, pick, check] = dry_run_all(ctx, "auth", "check-compute")
    assert auth["outputs"]["workspace"]["workspace_name"] == "ws-1"
    assert (
        auth["outputs"]["calls"][1]
        == f"MLClient.from_config(credential, path={str(tmp_path / 'config.json')!r})"
    )
    assert pick["outputs"]["model"]["name"] == "Phi-4-mini-instruct"
    assert check["outputs"]["gpus_per_node"] == 2


def test_stage_by_stage_and_json(tmp_path, monkeypatch, azure_env, no_network) -> None:
    monkeypatch.chdir(tmp_path)
    for stage in STAGES:
        ctx, out, _ = _context(tmp_path / ".ftctl", json_mode=True)
        [result] = dry_run_all(ctx, stage, stage)
        assert result["stage"] == stage and result["outputs"]["dry_run"] is True
        assert out.getvalue() == ""  # --json: the caller emits the results
        json.dumps(result)  # JSON-ready
    ctx, _, _ = _context(tmp_path / ".ftctl")
    with pytest.raises(Exception, match="comes after"):
        dry_run_all(ctx, "deploy", "auth")


def test_without_credentials_or_network_in_a_process(tmp_path) -> None:
    """`ftctl --backend azureml --config configs/azureml-phi4-ultrachat.yaml run --dry-run` in a fresh
    network namespace (no interface but loopback) with no Azure variables at all: exit 0, nine stages."""
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is not permitted here")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(ROOT / "src"),
        "AZURE_CONFIG_DIR": str(tmp_path / "home" / ".azure"),
    }
    command = [
        sys.executable,
        "-m",
        "ftctl",
        "--backend",
        "azureml",
        "--config",
        str(CONFIG),
        "run",
        "--dry-run",
    ]
    done = subprocess.run(
        ["unshare", "-n", *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert [line[2:-10] for line in done.stderr.splitlines() if line.endswith(" (dry run)")] == STAGES
    assert done.stdout.count("dry run from the configuration, no login, nothing sent") == 9
    assert "<latest version>" in done.stdout
    assert list(tmp_path.iterdir()) == [], "the dry run wrote something"


def test_run_dry_run_from_the_cli_records_nothing(tmp_path, monkeypatch, azure_env, no_network) -> None:
    from typer.testing import CliRunner

    from ftctl.cli.app import app

    monkeypatch.chdir(tmp_path)
    args = ["--workspace", str(tmp_path / ".ftctl"), "--backend", "azureml", "--config", str(CONFIG)]
    result = CliRunner().invoke(app, [*args, "--json", "run", "--dry-run", "--from", "register"])
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["stages"]
    assert [r["stage"] for r in stages] == ["register", "deploy", "score", "teardown"]
    assert not (tmp_path / ".ftctl").exists()
