"""auth on Azure ML: no login (a clear message, no traffic), the browser fallback only with a terminal, and
which workspace is used (config.json, --workspace-config, ids from the config or the environment)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from fakes.azureml import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE, FakeCredential
from ftctl.backends.azureml import client

NOT_LOGGED_IN = "no Azure credential is available"


@pytest.fixture
def logged_out(monkeypatch: pytest.MonkeyPatch, service: Any, ftctl: Any) -> None:
    """The real DefaultAzureCredential chain (developer credentials only), with nobody logged in: no Azure
    CLI, azd or PowerShell on PATH and an empty HOME. The fake service still answers anything that would
    get through (nothing should)."""
    ftctl.backend_options.pop("credential")
    monkeypatch.setenv("PATH", "/nonexistent")


def test_auth_without_a_login_and_without_a_terminal_says_how_to_log_in(az, logged_out: None) -> None:
    result = az("auth", code=2)
    assert f"error: {NOT_LOGGED_IN} (no terminal is attached for a browser sign-in)" in result.stderr
    for way in ("az login", "AZURE_CLIENT_SECRET", "managed or workload identity"):
        assert way in result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert az.service.requests == []  # not a single request: the credential failed first
    record = az.state()["stages"]["auth"]
    assert record["status"] == "failed" and record["error"]["type"] == "UsageError"


def test_the_browser_sign_in_is_tried_only_with_a_terminal(az, logged_out: None, monkeypatch) -> None:
    opened: list[str] = []

    class Browser(FakeCredential):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__()
            opened.append("browser")

    import azure.identity

    monkeypatch.setattr(azure.identity, "InteractiveBrowserCredential", Browser)
    monkeypatch.setattr(client, "terminal_attached", lambda: True)
    out = az.json("auth")
    assert opened == ["browser"]
    assert out["outputs"]["credential"] == "InteractiveBrowserCredential"

    monkeypatch.setattr(client, "terminal_attached", lambda: False)
    az("--set", "azureml.interactive_login=true", "auth", "--force", code=2)
    assert opened == ["browser"]


def test_auth_records_ids_never_a_token(az) -> None:
    result = az("auth")
    outputs = az.outputs("auth")
    assert outputs["subscription_id"] == SUBSCRIPTION
    assert outputs["resource_group"] == RESOURCE_GROUP
    assert outputs["workspace_name"] == WORKSPACE
    assert outputs["location"] == "eastus2"
    assert outputs["registry_name"] == "azureml"
    assert outputs["workspace_source"] == "ftctl config"
    text = json.dumps(outputs)
    assert "token" not in text.lower() and "eyJ" not in text
    assert "workspace ws-ftctl-test (resource group rg-ftctl-test) from ftctl config" in result.stderr


def _without_ids(az: Any) -> None:
    az.settings = [s for s in az.settings if not s.startswith("azureml.")]


def _config_json(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    path.write_text(
        json.dumps(
            {"subscription_id": SUBSCRIPTION, "resource_group": RESOURCE_GROUP, "workspace_name": WORKSPACE}
        )
    )
    return path


def test_workspace_from_a_config_json_found_up_the_tree(az, monkeypatch) -> None:
    _without_ids(az)
    found = _config_json(az.root)
    # A model's config.json on the way is not a workspace config: it is skipped.
    nested = az.root / "models" / "phi"
    nested.mkdir(parents=True)
    (nested / "config.json").write_text(json.dumps({"architectures": ["Phi3ForCausalLM"]}))
    monkeypatch.chdir(nested)
    az("auth")
    assert az.outputs("auth")["workspace_source"] == f"config file {found}"


def test_workspace_config_option(az, tmp_path: Path) -> None:
    _without_ids(az)
    path = _config_json(tmp_path / "elsewhere")
    az("--workspace-config", str(path), "auth")
    assert az.outputs("auth")["workspace_source"] == f"config file {path}"
    missing = az("--workspace-config", str(tmp_path / "nope.json"), "auth", "--force", code=2)
    assert "azureml.workspace_config:" in missing.stderr and "does not exist" in missing.stderr


def test_workspace_from_the_environment(az, monkeypatch) -> None:
    _without_ids(az)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    monkeypatch.setenv("AZURE_RESOURCE_GROUP", RESOURCE_GROUP)
    monkeypatch.setenv("AZUREML_WORKSPACE_NAME", WORKSPACE)
    az("auth")
    assert az.outputs("auth")["workspace_source"] == "environment"


def test_no_workspace_configured_is_a_config_error(az) -> None:
    _without_ids(az)
    result = az("auth", code=2)
    assert "no Azure ML workspace configured" in result.stderr
    assert "azureml.subscription_id (AZURE_SUBSCRIPTION_ID)" in result.stderr
    assert "--workspace-config" in result.stderr
    assert az.service.requests == []


def test_a_wrong_workspace_name_is_a_clean_error(az) -> None:
    result = az("--set", "azureml.workspace_name=nope", "auth", code=1)
    assert "workspace nope not found" in result.stderr
    assert "Traceback" not in result.stderr
