"""Fixtures for the Azure ML backend's tests: the fake Azure ML service wired into azure-ai-ml.

Nothing leaves this machine: every MLClient gets the fake service's transport and a fake credential
(injected into the Azure backend's handles by the CLI harness, as `app(obj=BackendOptions(...))`),
the blob client azure-ai-ml builds for uploads gets the same transport, and sockets are closed to
anything but the loopback interface for the duration of each test.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness import Ftctl

if TYPE_CHECKING:
    from fakes.azureml import FakeAzureML

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "azureml-phi4-ultrachat.yaml"  # the headline config
NOTEBOOK_CONFIG = ROOT / "configs" / "azureml-phi3-ultrachat.yaml"
AZURE_ENV = (
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
    "AZUREML_WORKSPACE_NAME",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "IDENTITY_ENDPOINT",
    "MSI_ENDPOINT",
)


def _row(i: int) -> dict[str, Any]:
    return {
        "prompt": f"Question {i}: what is {i} + {i}?",
        "prompt_id": f"id-{i}",
        "messages": [
            {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
            {"role": "assistant", "content": f"{i} + {i} = {2 * i}."},
        ],
    }


@pytest.fixture(autouse=True)
def sdk_deprecations() -> None:
    """azure-ai-ml 1.35 uses marshmallow APIs that marshmallow 3.x deprecates: hundreds of warnings per
    run that say nothing about ftctl (DeprecationWarnings are hidden from ftctl's users anyway)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(marshmallow|azure)\.")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any attempt to open a non-loopback connection fails the test (and is recorded)."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost")):
            return real_connect(sock, address)
        if sock.family == socket.AF_UNIX:
            return real_connect(sock, address)
        attempts.append(address)
        raise OSError(f"network access blocked in tests: {address}")

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in (None, "localhost") or (isinstance(host, str) and host.startswith("127.")):
            return real_getaddrinfo(host, *args, **kwargs)
        attempts.append(host)
        raise socket.gaierror(f"name resolution blocked in tests: {host}")

    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert attempts == [], f"the test tried to reach the network: {attempts}"


@pytest.fixture
def azure_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Azure identity from the environment: developer credentials only, and none of them logged in."""
    for name in AZURE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "dev")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "home" / ".azure"))


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch, azure_env: None, ftctl: Ftctl) -> FakeAzureML:
    """The fake Azure ML service with its registry as azureml-assets has it since 2026-07:
    Phi-3-mini-4k-instruct archived (fine-tuning retired) and Phi-4 active, both with system_metadata."""
    pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed (pip install -e '.[azure]')")
    from fakes.azureml import FakeAzureML, FakeCredential, FakeTransport

    fake = FakeAzureML()
    fake.add_phi3()
    fake.add_phi4()
    transport = FakeTransport(fake)
    ftctl.backend_options.update(transport=transport, credential=FakeCredential())
    # azure-ai-ml builds the blob client for uploads without the MLClient's transport: give it the fake's.
    from azure.ai.ml._artifacts import _blob_storage_helper

    real = _blob_storage_helper.BlobServiceClient
    monkeypatch.setattr(
        _blob_storage_helper, "BlobServiceClient", functools.partial(real, transport=transport)
    )
    # The workspace's MLflow, where register's gate reads the job's eval_loss (mlflow comes with the
    # azure extra; without it the gate says so).
    if importlib.util.find_spec("mlflow") is not None:
        from fakes.azureml_mlflow import serve_mlflow

        serve_mlflow(monkeypatch, fake)
    return fake


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A folder of ultrachat-format <split>.jsonl files (read line by line: no hub, no datasets import)."""
    folder = tmp_path / "ultrachat"
    folder.mkdir()
    for split, count in (("train_sft", 40), ("test_sft", 20), ("train_gen", 20), ("test_gen", 20)):
        rows = [_row(i) for i in range(count)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


class AzureFtctl(Ftctl):
    """`ftctl --backend azureml --config configs/azureml-phi4-ultrachat.yaml --set ...` against the fake
    service (the shared harness, with those options; `ftctl` is the same workspace without them)."""

    def __init__(self, ftctl: Ftctl, service: FakeAzureML, dataset: Path) -> None:
        from fakes.azureml import RESOURCE_GROUP, SUBSCRIPTION, WORKSPACE

        settings = [
            f"azureml.subscription_id={SUBSCRIPTION}",
            f"azureml.resource_group={RESOURCE_GROUP}",
            f"azureml.workspace_name={WORKSPACE}",
            f"data.dataset={dataset}",
            "data.split_pc=100",
            "poll_interval_s=0",
        ]
        super().__init__(
            ftctl.root, options=["--backend", "azureml", "--config", str(CONFIG)], settings=settings
        )
        self.runner = ftctl.runner
        self.backend_options = ftctl.backend_options  # the fake service, injected by `service`
        self.ftctl = ftctl
        self.service = service
        self.dataset = dataset


@pytest.fixture
def az(ftctl: Ftctl, service: FakeAzureML, dataset: Path) -> AzureFtctl:
    return AzureFtctl(ftctl, service, dataset)


@pytest.fixture
def tracking(service: FakeAzureML) -> FakeAzureML:
    """The fake service, for a test that reads its MLflow tracking server through the real mlflow client
    and the azureml-mlflow plugin (mlflow's own requests session is served by the fake: see `service`);
    skipped without azureml-mlflow."""
    pytest.importorskip("azureml.mlflow", reason="azureml-mlflow is not installed (the azure extra)")
    return service
