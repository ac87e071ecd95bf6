"""A fake Azure ML service at the HTTP level, for azure-ai-ml's real code paths.

`FakeAzureML` answers the REST routes the notebook's flow uses, with bodies shaped like the ones Azure
returns (the shapes follow Azure/azure-sdk-assets recordings of azure-ai-ml's e2e tests and the
Azure/azure-rest-api-specs examples; ids, names and values are made up):

- registry discovery and the registry data plane (model and component versions, model containers);
- the workspace (ARM): workspace, computes (GET, PUT and DELETE as long-running operations), VM sizes,
  the default datastore and its secrets, pipeline jobs (PUT, then GETs moving the status along),
  model versions, online endpoints and deployments (PUT/DELETE with Azure-AsyncOperation polling),
  listKeys;
- the blob storage the SDK uploads local files to (and the steps' log blobs, read by SAS URL), and an
  endpoint's scoring URI;
- run history and MLflow (fakes/azureml_mlflow.py): a pipeline job's steps, each step's run details with
  its log files, and the workspace's MLflow runs and metrics.

Every request is recorded (`service.requests`) with its JSON body, so tests assert on what was sent.
Faults are injected per route (`service.fail(...)`). `FakeTransport` plugs the service into azure-core:
it is a real `RequestsTransport` whose requests session is served by the fake instead of sockets, and
whose `sleep` (retry back-off, long-running-operation polling) records the delay instead of sleeping.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape

import requests
import urllib3
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter, HTTPAdapter

SUBSCRIPTION = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
RESOURCE_GROUP = "rg-ftctl-test"
WORKSPACE = "ws-ftctl-test"
LOCATION = "eastus2"
REGISTRY = "azureml"
REGISTRY_SUBSCRIPTION = "0a0b0c0d-1111-2222-3333-444455556666"
REGISTRY_RESOURCE_GROUP = "registry-builtin-prod-eastus-01"
REGISTRY_MFE = "https://cert-eastus.experiments.azureml.net/"
STORAGE_ACCOUNT = "stftctltest"
FAKE_TOKEN = "fake-arm-token-not-a-secret"
ENDPOINT_KEY = "fake-endpoint-primary-key-0123456789"
FAKE_SIGNATURE = base64.urlsafe_b64encode(FAKE_TOKEN.encode()).rstrip(b"=").decode()

ARM = "https://management.azure.com"
WS_PREFIX = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
    f"/providers/Microsoft.MachineLearningServices/workspaces/{WORKSPACE}"
)
WS_ID = WS_PREFIX
CONTAINER = "azureml-blobstore-8d2c6f4e-0c3b-4f2a-9b1d-7e6f5a4b3c2d"  # the workspace's default datastore
# A model version registered from a job's output (`azureml://jobs/<job>/outputs/<output>`) is answered with
# the datastore path the output was written to: the default output path of a job is
# azureml://datastores/workspaceblobstore/paths/azureml/<job>/<output>/ (azure-ai-ml's
# ModelOperations.download parses "datastores/<name>/paths/<prefix>" out of the version's path).
JOB_OUTPUT = re.compile(r"azureml://jobs/(?P<job>[^/]+)/outputs/(?P<output>[^/]+)/?$")

# The chat_completion_pipeline inputs (azureml-assets, version 0.0.82): name -> (type, extra).
COMPONENT_INPUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "instance_type_model_import": ("string", {"default": "Standard_d12_v2"}),
    "instance_type_preprocess": ("string", {"default": "Standard_d12_v2"}),
    "instance_type_finetune": ("string", {"default": "Standard_nc24rs_v3"}),
    "instance_type_model_evaluation": ("string", {"default": "Standard_nc24rs_v3"}),
    "shm_size_finetune": ("string", {"default": "5g"}),
    "num_nodes_finetune": ("integer", {"default": 1, "min": 1}),
    "number_of_gpu_to_use_finetuning": ("integer", {"default": 1, "min": 1}),
    "huggingface_id": ("string", {}),
    "pytorch_model_path": ("custom_model", {"mode": "rw_mount"}),
    "mlflow_model_path": ("mlflow_model", {"mode": "rw_mount"}),
    "finetune_config_path": ("uri_file", {}),
    "trust_remote_code": ("string", {"default": "false", "enum": ["true", "false"]}),
    "task_name": ("string", {"default": "ChatCompletion", "enum": ["ChatCompletion"], "optional": False}),
    "batch_size": ("integer", {"default": 1000, "min": 1}),
    "pad_to_max_length": ("string", {"default": "false", "enum": ["true", "false"]}),
    "max_seq_length": ("integer", {"default": -1}),
    "train_file_path": ("uri_file", {"mode": "rw_mount"}),
    "validation_file_path": ("uri_file", {"mode": "rw_mount"}),
    "test_file_path": ("uri_file", {"mode": "rw_mount"}),
    "train_mltable_path": ("mltable", {}),
    "validation_mltable_path": ("mltable", {}),
    "test_mltable_path": ("mltable", {}),
    "apply_lora": ("string", {"default": "false", "enum": ["true", "false"]}),
    "merge_lora_weights": ("string", {"default": "true", "enum": ["true", "false"]}),
    "lora_alpha": ("integer", {"default": 128}),
    "lora_r": ("integer", {"default": 8}),
    "lora_dropout": ("number", {"default": 0.0}),
    "num_train_epochs": ("integer", {"default": 1, "min": 1}),
    "max_steps": ("integer", {"default": -1}),
    "per_device_train_batch_size": ("integer", {"default": 1, "min": 1}),
    "per_device_eval_batch_size": ("integer", {"default": 1, "min": 1}),
    "auto_find_batch_size": ("string", {"default": "false", "enum": ["true", "false"]}),
    "optim": ("string", {"default": "adamw_torch", "enum": ["adamw_torch", "adafactor"]}),
    "learning_rate": ("number", {"default": 2e-5}),
    "warmup_steps": ("integer", {"default": 0}),
    "weight_decay": ("number", {"default": 0.0}),
    "adam_beta1": ("number", {"default": 0.9}),
    "adam_beta2": ("number", {"default": 0.999}),
    "adam_epsilon": ("number", {"default": 1e-8}),
    "gradient_accumulation_steps": ("integer", {"default": 1}),
    "eval_accumulation_steps": ("integer", {"default": -1}),
    "max_grad_norm": ("number", {"default": 1.0}),
    "lr_scheduler_type": (
        "string",
        {
            "default": "linear",
            "enum": [
                "linear",
                "cosine",
                "cosine_with_restarts",
                "polynomial",
                "constant",
                "constant_with_warmup",
            ],
        },
    ),
    "precision": ("string", {"default": "32", "enum": ["32", "16"]}),
    "seed": ("integer", {"default": 42}),
    "enable_full_determinism": ("string", {"default": "false", "enum": ["true", "false"]}),
    "dataloader_num_workers": ("integer", {"default": 0}),
    "ignore_mismatched_sizes": ("string", {"default": "false", "enum": ["true", "false"]}),
    "evaluation_strategy": ("string", {"default": "epoch", "enum": ["epoch", "steps", "disable"]}),
    "evaluation_steps_interval": ("number", {"default": 0.0}),
    "eval_steps": ("integer", {"default": 500}),
    "logging_strategy": ("string", {"default": "steps", "enum": ["epoch", "steps"]}),
    "logging_steps": ("integer", {"default": 10}),
    "metric_for_best_model": ("string", {"default": "loss", "enum": ["loss", "f1", "exact"]}),
    "resume_from_checkpoint": ("string", {"default": "false", "enum": ["true", "false"]}),
    "save_total_limit": ("integer", {"default": -1}),
    "apply_early_stopping": ("string", {"default": "false", "enum": ["true", "false"]}),
    "early_stopping_patience": ("integer", {"default": 1}),
    "early_stopping_threshold": ("number", {"default": 0.0}),
    "apply_deepspeed": ("string", {"default": "false", "enum": ["true", "false"]}),
    "deepspeed": ("uri_file", {"mode": "rw_mount"}),
    "deepspeed_stage": ("string", {"default": "2", "enum": ["2", "3"]}),
    "apply_ort": ("string", {"default": "false", "enum": ["true", "false"]}),
    "evaluation_config": ("uri_file", {}),
    "evaluation_config_params": ("string", {}),
    "compute_model_import": ("string", {"default": "serverless"}),
    "compute_preprocess": ("string", {"default": "serverless"}),
    "compute_finetune": ("string", {"default": "serverless"}),
    "compute_model_evaluation": ("string", {"default": "serverless"}),
}

PHI3_FINETUNE_SKUS = [
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4",
    "Standard_ND96amsr_A100_v4",
]
PHI3_INFERENCE_SKUS = [
    "Standard_NC6s_v3",
    "Standard_NC12s_v3",
    "Standard_NC24s_v3",
    "Standard_ND40rs_v2",
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_ND96asr_v4",
    "Standard_ND96amsr_A100_v4",
    "Standard_NC96ads_A100_v4",
]
# Phi-3-mini-4k-instruct's system_metadata.SKU.inferenceRecommendedSkus and deprecation dates
# (azureml-assets spec.yaml, 2026-07): the recommended list keeps the NCv3 sizes; the dates are timestamps.
PHI3_INFERENCE_RECOMMENDED = [
    "Standard_NC6s_v3",
    "Standard_NC12s_v3",
    "Standard_NC24s_v3",
    "Standard_ND40rs_v2",
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4",
    "Standard_ND96amsr_A100_v4",
]
PHI3_DEPRECATION = {
    "finetuneDeprecationDate": "2025-06-30T00:00:00.000000Z",
    "finetuneRetirementDate": "2025-08-30T00:00:00.000000Z",
    "inferenceDeprecationDate": "2025-06-30T00:00:00.000000Z",
    "inferenceLegacyDate": "2025-06-09T00:00:00.000000Z",
    "inferenceRetirementDate": "2025-08-30T00:00:00.000000Z",
}
# Phi-4's lists (azureml-assets assets/models/system/Phi-4/spec.yaml, 2026-07: A100 and H100 only).
PHI4_FINETUNE_SKUS = [
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4",
    "Standard_ND96amsr_A100_v4",
    "Standard_NC40ads_H100_v5",
    "Standard_NC80adis_H100_v5",
    "Standard_ND96isr_H100_v5",
]
PHI4_INFERENCE_SKUS = [
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_NC96ads_A100_v4",
    "Standard_ND96asr_v4",
    "Standard_ND96amsr_A100_v4",
    "Standard_ND96isr_H100_v5",
    "Standard_NC40ads_H100_v5",
    "Standard_NC80adis_H100_v5",
]
PHI4_DEFAULTS = {
    "apply_deepspeed": "true",
    "deepspeed_stage": 3,
    "apply_lora": "true",
    "apply_ort": "false",
    "precision": 16,
    "ignore_mismatched_sizes": "false",
    "num_train_epochs": 1,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-6,
    "lr_scheduler_type": "cosine",
    "logging_strategy": "steps",
    "logging_steps": 10,
    "save_total_limit": 1,
}


def phi_system_metadata(
    finetune: list[str],
    inference: list[str],
    recommended: list[str],
    deprecation: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Phi model's system_metadata with the keys azureml-assets' spec.yaml files lay out since the
    2026-06/07 migration (tasks, SKU, supportedComputes, deprecation; display fields left out)."""
    meta: dict[str, Any] = {
        "deploymentOptions": ["UnifiedEndpointMaaS", "MaaP", "ServerlessMaaS"],
        "tasks": {"fineTuningTasks": ["chat-completion"], "inferenceTasks": ["chat-completion"]},
        "SKU": {
            "inferenceRecommendedSkus": list(recommended),
            "finetuneRecommendedSkus": list(finetune),
            "inferenceMinSkuSpec": "24|1|220|64",
            "finetuneMinSkuSpec": "24|1|220|64",
        },
        "publisher": "Microsoft",
        "supportedComputes": {"inferenceComputes": list(inference), "finetuneComputes": list(finetune)},
        "inferenceSupportedEnvs": ["vllm"],
        "platformCapabilities": {"enableBatch": False, "maasInference": True},
    }
    if deprecation:
        meta["deprecation"] = dict(deprecation)
    return meta


# The model_specific_defaults of Phi-3-mini-4k-instruct's spec.yaml in azureml-assets, as the registry
# returns tags: one string holding a Python dict literal (the notebook parses it with ast.literal_eval).
PHI3_DEFAULTS = {
    "apply_deepspeed": "true",
    "deepspeed_stage": 2,
    "apply_lora": "true",
    "apply_ort": "false",
    "precision": 16,
    "ignore_mismatched_sizes": "false",
    "num_train_epochs": 1,
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-6,
    "learning_rate_min": 5e-7,
    "learning_rate_max": 5e-5,
    "lr_scheduler_type": "cosine",
    "logging_strategy": "steps",
    "logging_steps": 10,
    "save_total_limit": 1,
}

VM_SIZES = [
    ("Standard_DS3_v2", "standardDSv2Family", 4, 0, 14.0),
    ("Standard_NC6s_v3", "standardNCSv3Family", 6, 1, 112.0),
    ("Standard_NC24s_v3", "standardNCSv3Family", 24, 4, 448.0),
    ("Standard_NC4as_T4_v3", "standardNCASv3_T4Family", 4, 1, 28.0),
    ("Standard_NC24ads_A100_v4", "standardNCADSA100v4Family", 24, 1, 220.0),
    ("Standard_NC48ads_A100_v4", "standardNCADSA100v4Family", 48, 2, 440.0),
    ("Standard_NC96ads_A100_v4", "standardNCADSA100v4Family", 96, 4, 880.0),
    ("Standard_ND96asr_v4", "standardNDASv4_A100Family", 96, 8, 900.0),
]

# azureml-examples, model-as-a-service chat-completion notebook: the tag a model's serverless fine-tuning
# regions are read from, and Phi-4-mini-instruct's row of its support matrix.
MAAS_REGIONS_TAG = "maas-finetuning-deploy-regions"
MAAS_REGIONS = ["eastus2", "eastus", "northcentralus", "westus3", "westus", "southcentralus"]

TERMINAL_JOB_STATES = {"Completed", "Failed", "Canceled", "NotResponding"}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.0000000+00:00", time.gmtime())


def _system_data() -> dict[str, str]:
    return {
        "createdAt": _now(),
        "createdBy": "ftctl test user",
        "createdByType": "User",
        "lastModifiedAt": _now(),
        "lastModifiedBy": "ftctl test user",
        "lastModifiedByType": "User",
    }


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    url: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # without Authorization (see `auth`)
    auth: str | None  # the Authorization scheme and whether it carried the fake token / key
    body: Any  # decoded JSON, bytes, or None
    status: int = 0

    def __repr__(self) -> str:
        return f"<{self.method} {self.host}{self.path} -> {self.status}>"


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int | None  # None: every time
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0


@dataclass
class Operation:
    """A long-running operation: InProgress for `polls` status GETs, then Succeeded (or Failed)."""

    polls: int
    on_done: Callable[[], None]
    fail_with: str | None = None
    done: bool = False


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def fake_jwt(audience: str) -> str:
    """An unsigned JWT: azure-ai-ml decodes the Azure ML token (without verifying it) to check `aud`."""
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = {
        "aud": audience,
        "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000000/",
        "tid": "00000000-0000-0000-0000-000000000000",
        "oid": "33333333-4444-5555-6666-777777777777",
        "upn": "someone@example.com",
        "exp": int(time.time()) + 3600,
    }
    return f"{header}.{_b64url(json.dumps(claims).encode())}.{FAKE_SIGNATURE}"


class FakeCredential:
    """An azure.core TokenCredential handing out fake tokens (no identity traffic at all)."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        audience = scopes[0].removesuffix("/.default") if scopes else ""
        return AccessToken(fake_jwt(audience), int(time.time()) + 3600)


def _finite_json(value: Any) -> Any:
    """`value` with non-finite floats as the strings protobuf's JSON mapping writes ("NaN", "Infinity",
    "-Infinity"): how the MLflow server sends a NaN metric (bare NaN is not JSON; its client refuses it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


class _Adapter(BaseAdapter):
    def __init__(self, service: FakeAzureML) -> None:
        super().__init__()
        self.service = service

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode("utf-8")
        elif body is not None and not isinstance(body, bytes):
            body = b"".join(chunk if isinstance(chunk, bytes) else chunk.encode() for chunk in body)
        status, headers, payload = self.service.handle(
            request.method or "GET", request.url or "", dict(request.headers), body
        )
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(payload),
            headers={"Content-Length": str(len(payload)), **headers},
            status=status,
            reason="OK" if status < 400 else "Error",
            request_method=request.method,
            preload_content=False,
            decode_content=False,
        )
        return HTTPAdapter().build_response(request, raw)

    def close(self) -> None:
        pass


class FakeTransport(RequestsTransport):
    """azure-core's requests transport, served by the fake service; `sleep` records instead of sleeping."""

    def __init__(self, service: FakeAzureML) -> None:
        session = requests.Session()
        session.trust_env = False
        adapter = _Adapter(service)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        super().__init__(session=session, session_owner=False)
        self.service = service

    def sleep(self, duration: float) -> None:
        self.service.sleeps.append(duration)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    return status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, str], Any]:
    return _json(status, {"error": {"code": code, "message": message, "details": [], "additionalInfo": []}})


class FakeAzureML:
    """In-memory Azure ML: one workspace, the `azureml` registry, blob storage and scoring URIs."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.unhandled: list[Recorded] = []
        self.sleeps: list[float] = []
        self.faults: list[Fault] = []
        self.registry_models: dict[str, dict[str, dict[str, Any]]] = {}
        self.components: dict[str, dict[str, dict[str, Any]]] = {}
        self.computes: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_polls: dict[str, int] = {}
        self.models: dict[str, dict[str, dict[str, Any]]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.serverless_endpoints: dict[str, dict[str, Any]] = {}
        self.serverless_operations: dict[str, str] = {}  # endpoint -> its create operation
        self.deployments: dict[str, dict[str, dict[str, Any]]] = {}
        self.blobs: dict[str, bytes] = {}
        self.blob_metadata: dict[str, dict[str, str]] = {}
        self.operations: dict[str, Operation] = {}
        self.interrupts: list[tuple[str, re.Pattern[str], bool]] = []
        # Knobs tests turn.
        self.lro_polls = 2  # InProgress answers before an operation succeeds
        self.job_states = ["NotStarted", "Queued", "Preparing", "Running", "Running", "Completed"]
        self.compute_final_state = "Succeeded"
        self.deployment_final_state = "Succeeded"
        self.score_body: str = '{"output": "The capital of France is Paris."}'
        self.chat_answer = "The capital of France is Paris."  # a serverless endpoint's chat completion
        self.score_status = 200
        # Dedicated cluster vCPU quota in the region: VM family -> (in use, limit); and the regional total.
        self.quota: dict[str, tuple[int, int]] = {family: (0, 96) for _, family, *_ in VM_SIZES}
        self.regional_quota = (0, 200)
        self.add_component("chat_completion_pipeline", "0.0.82")
        from fakes.azureml_mlflow import FakeMlflow

        self.mlflow = FakeMlflow(self)  # the workspace's MLflow tracking server (its runs follow the jobs)

    # --- setup helpers ---------------------------------------------------------------------------

    def add_registry_model(
        self,
        name: str,
        version: str,
        *,
        tags: dict[str, str] | None = None,
        system_metadata: dict[str, Any] | None = None,
        is_archived: bool = False,
        stage: str | None = None,
        description: str = "",
        finetunable: bool = True,
    ) -> dict[str, Any]:
        # azureml-assets' model.yaml: properties.finetuning-tasks names what a model can be fine-tuned for.
        tasks = {"finetuning-tasks": tags["task"]} if finetunable and tags and tags.get("task") else {}
        props: dict[str, Any] = {
            "description": description or f"{name} for chat completion",
            "tags": dict(tags or {}),
            "properties": tasks,
            "isArchived": is_archived,
            "isAnonymous": False,
            "flavors": {"python_function": {"data": {"loader_module": "mlflow.transformers"}}},
            "modelType": "mlflow_model",
            "modelUri": f"https://registrystore.blob.core.windows.net/{name.lower()}/{version}/mlflow_model_folder",
            "originAssetId": None,
            "jobName": None,
            "intellectualProperty": None,
        }
        if stage is not None:
            props["stage"] = stage
        if system_metadata is not None:
            props["systemMetadata"] = system_metadata
        self.registry_models.setdefault(name, {})[version] = {
            "id": f"azureml://registries/{REGISTRY}/models/{name}/versions/{version}",
            "name": name,
            "type": "models",
            "properties": props,
            "systemData": _system_data(),
        }
        return props

    def add_phi3(
        self, *, archived: bool = True, in_system_metadata: bool = True, version: str = "15"
    ) -> None:
        """Phi-3-mini-4k-instruct. By default as azureml-assets has it since the 2026-06/07 metadata
        migration (assets/models/system/phi-3-mini-4k-instruct/spec.yaml, snapshot 2026-07-23):
        `isArchived: true`; tasks, allow-lists, recommended SKUs and lifecycle dates under system_metadata;
        model_specific_defaults (17 keys) still a tag, which publishing stringifies as JSON.
        `in_system_metadata=False`: the 2024-25 layout the notebook read (tags, `finetuning-tasks`
        property; the date tags as the spec had them from 2025)."""
        tags: dict[str, str] = {"_aml_system_vanity_registry": "azureml-phi"}
        system_metadata = None
        if in_system_metadata:
            tags["model_specific_defaults"] = json.dumps(PHI3_DEFAULTS)
            system_metadata = phi_system_metadata(
                PHI3_FINETUNE_SKUS, PHI3_INFERENCE_SKUS, PHI3_INFERENCE_RECOMMENDED, PHI3_DEPRECATION
            )
        else:
            tags.update(
                {
                    "task": "chat-completion",
                    "author": "Microsoft",
                    "license": "mit",
                    "FinetuneDeprecationDate": "2025-06-30",
                    "FinetuneRetirementDate": "2025-08-30",
                    "InferenceRetirementDate": "2025-08-30",
                    "finetune_compute_allow_list": repr(PHI3_FINETUNE_SKUS),
                    "inference_compute_allow_list": repr(PHI3_INFERENCE_SKUS),
                    "model_specific_defaults": repr(PHI3_DEFAULTS),
                }
            )
        self.add_registry_model(
            "Phi-3-mini-4k-instruct",
            version,
            tags=tags,
            system_metadata=system_metadata,
            is_archived=archived,
            finetunable=not in_system_metadata,
        )
        if not in_system_metadata:
            self.registry_models["Phi-3-mini-4k-instruct"][version]["properties"]["properties"] = {
                "finetuning-tasks": "chat-completion"
            }

    def add_phi4(self, version: str = "8") -> None:
        """Phi-4 as azureml-assets has it (assets/models/system/Phi-4/spec.yaml, snapshot 2026-07-23):
        active, chat-completion fine-tunable, A100/H100 allow-lists in system_metadata, its
        model_specific_defaults (DeepSpeed stage 3) a tag."""
        self.add_registry_model(
            "Phi-4",
            version,
            tags={"model_specific_defaults": json.dumps(PHI4_DEFAULTS)},
            system_metadata=phi_system_metadata(PHI4_FINETUNE_SKUS, PHI4_INFERENCE_SKUS, PHI4_INFERENCE_SKUS),
            finetunable=False,  # no properties.finetuning-tasks: the migration moved it to system_metadata
        )

    def add_phi4_mini(self, version: str = "1") -> None:
        """Phi-4-mini-instruct, fine-tuned through the fine-tuning job API and served serverless.
        azureml-assets has no spec.yaml for it; azureml-examples' model-as-a-service chat-completion
        notebook (sdk/python/jobs/finetuning/standalone/model-as-a-service/chat-completion) fine-tunes it
        with create_finetuning_job and reads its `maas-finetuning-deploy-regions` tag before deploying;
        the regions are that notebook's support matrix for Phi-4-mini-instruct."""
        self.add_registry_model(
            "Phi-4-mini-instruct",
            version,
            tags={
                "task": "chat-completion",
                "author": "Microsoft",
                MAAS_REGIONS_TAG: ",".join(MAAS_REGIONS),
            },
        )

    def add_phi_family(self) -> None:
        """Other Phi models beside Phi-3-mini-4k-instruct: a fine-tunable successor, one whose fine-tuning
        was retired (and archived), one that cannot be fine-tuned, and a model of another family."""
        chat = {"task": "chat-completion", "author": "Microsoft"}
        self.add_phi4_mini()
        self.add_registry_model(
            "Phi-3.5-mini-instruct",
            "6",
            tags={**chat, "FinetuneRetirementDate": "2025-08-30"},
            is_archived=True,
        )
        self.add_registry_model("Phi-4-multimodal-instruct", "1", tags=dict(chat), finetunable=False)
        self.add_registry_model("Llama-3.2-1B-Instruct", "3", tags={"task": "chat-completion"})

    def add_component(
        self, name: str, version: str, inputs: dict[str, tuple[str, dict]] | None = None
    ) -> None:
        spec_inputs = {}
        for key, (kind, extra) in (inputs or COMPONENT_INPUTS).items():
            entry: dict[str, Any] = {
                "type": kind,
                "optional": "True" if extra.get("optional", True) else "False",
            }
            for attr in ("default", "enum", "min", "mode"):
                if attr in extra:
                    value = extra[attr]
                    entry[attr] = [str(v) for v in value] if attr == "enum" else str(value)
            spec_inputs[key] = entry
        spec = {
            "name": name,
            "version": version,
            "display_name": "Chat Completion Pipeline",
            "description": "Finetunes Hugging Face pretrained models for chat completion.",
            "type": "pipeline",
            "is_deterministic": "True",
            "inputs": spec_inputs,
            "outputs": {
                "pytorch_model_folder": {"type": "uri_folder"},
                "mlflow_model_folder": {"type": "mlflow_model"},
            },
        }
        self.components.setdefault(name, {})[version] = {
            "id": f"azureml://registries/{REGISTRY}/components/{name}/versions/{version}",
            "name": name,
            "type": "components",
            "properties": {
                "description": spec["description"],
                "tags": {},
                "properties": {},
                "isArchived": False,
                "isAnonymous": False,
                "componentSpec": spec,
            },
            "systemData": _system_data(),
        }

    def put_folder(self, prefix: str, folder: Path) -> None:
        """The files under `folder` as blobs under `prefix` in the default datastore (what a job wrote)."""
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                blob = f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}"
                self.blobs[f"{STORAGE_ACCOUNT}/{CONTAINER}/{blob}"] = path.read_bytes()

    def add_compute(self, name: str, size: str, state: str = "Succeeded") -> None:
        self.computes[name] = self._compute_body(
            name, {"vmSize": size, "scaleSettings": {"minNodeCount": 0, "maxNodeCount": 1}}, state
        )

    def interrupt(self, method: str, path_regex: str, *, after: bool = False) -> None:
        """Raise KeyboardInterrupt in the client on the next matching request (a Ctrl-C or a kill at that
        moment): before the service sees it, or after the service handled it (the reply is lost)."""
        self.interrupts.append((method.upper(), re.compile(path_regex), after))

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Answer matching requests with `status` (`times` times, or always with None)."""
        fault = Fault(method.upper(), re.compile(path_regex), status, times, dict(headers or {}))
        self.faults.append(fault)
        return fault

    # --- queries for tests -----------------------------------------------------------------------

    def find(self, method: str, path_regex: str) -> list[Recorded]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method.upper() and pattern.search(r.path)]

    def one(self, method: str, path_regex: str) -> Recorded:
        found = [r for r in self.find(method, path_regex) if r.status < 300]
        assert len(found) == 1, f"expected one successful {method} {path_regex}, got {found}"
        return found[0]

    @property
    def mutations(self) -> list[Recorded]:
        """Requests that create, change or delete something in Azure ML (not blob uploads or reads, such
        as listing keys or searching MLflow runs)."""
        return [
            r
            for r in self.requests
            if r.method in ("PUT", "PATCH", "DELETE")
            or (
                r.method == "POST"
                and not r.path.endswith(("/listKeys", "/listSecrets", "/score", "/mlflow/runs/search"))
            )
        ]

    # --- dispatch --------------------------------------------------------------------------------

    def handle(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        path = unquote(parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        authorization = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
        auth = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if authorization == ENDPOINT_KEY:  # a serverless endpoint's key, sent without a scheme
                auth = "endpoint-key"
            elif value.endswith(FAKE_SIGNATURE):
                auth = f"{scheme} fake-token"
            else:
                auth = f"{scheme} {'endpoint-key' if value == ENDPOINT_KEY else '?'}"
        decoded: Any = body
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
        if body and "json" in content_type:
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = body
        record = Recorded(
            method=method.upper(),
            url=url,
            host=parts.netloc,
            path=path,
            query=query,
            headers={k: v for k, v in headers.items() if k.lower() != "authorization"},
            auth=auth,
            body=decoded,
        )
        interrupt = next(
            (i for i in self.interrupts if i[0] == record.method and i[1].search(record.path)), None
        )
        if interrupt is not None:
            self.interrupts.remove(interrupt)
            if not interrupt[2]:
                raise KeyboardInterrupt(f"interrupted before {record.method} {record.path}")
        self.requests.append(record)
        status, out_headers, payload = self._answer(record, body)
        record.status = status
        if interrupt is not None:
            raise KeyboardInterrupt(f"interrupted after {record.method} {record.path}")
        if isinstance(payload, bytes):
            data = payload
        elif payload is None:
            data = b""
        elif isinstance(payload, str):
            data = payload.encode("utf-8")
        else:
            data = json.dumps(_finite_json(payload), allow_nan=False).encode("utf-8")
        return status, out_headers, data

    def _answer(self, r: Recorded, raw_body: bytes | None) -> tuple[int, dict[str, str], Any]:
        for fault in self.faults:
            matches = fault.method == r.method and fault.pattern.search(r.path)
            if matches and (fault.times is None or fault.hits < fault.times):
                fault.hits += 1
                code = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(fault.status, "Fault")
                status, headers, body = _error(fault.status, code, f"injected {fault.status}")
                return status, {**headers, **fault.headers}, body
        if r.host.endswith(".blob.core.windows.net"):
            return self._blob(r, raw_body)
        if r.host.endswith(".inference.ml.azure.com"):
            return self._score(r)
        if r.host.endswith(".models.ai.azure.com"):
            return self._chat_completion(r)
        for method, pattern, handler in self._routes():
            if method != r.method:
                continue
            match = re.fullmatch(pattern, r.path)
            if match:
                return handler(r, **match.groupdict())
        self.unhandled.append(r)
        return _error(404, "FakeRouteNotFound", f"the fake Azure ML does not serve {r.method} {r.path}")

    def _routes(self) -> list[tuple[str, str, Callable[..., tuple[int, dict[str, str], Any]]]]:
        reg = (
            r"/mferp/managementfrontend/subscriptions/[^/]+/resourceGroups/[^/]+"
            r"/providers/Microsoft\.MachineLearningServices/registries/(?P<registry>[^/]+)"
        )
        ws = (
            r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
            r"/providers/Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)"
        )
        ops = r"/subscriptions/[^/]+/providers/Microsoft\.MachineLearningServices/locations/[^/]+"
        return [
            ("GET", r"/registrymanagement/v1\.0/registries/(?P<registry>[^/]+)/discovery", self._discovery),
            ("GET", reg + r"/models", self._model_containers),
            ("GET", reg + r"/models/(?P<name>[^/]+)/versions", self._latest_registry_model),
            ("GET", reg + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._registry_model),
            ("GET", reg + r"/components/(?P<name>[^/]+)/versions", self._latest_component),
            ("GET", reg + r"/components/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._component),
            ("GET", ws, self._workspace),
            ("GET", ws + r"/computes/(?P<name>[^/]+)", self._get_compute),
            ("PUT", ws + r"/computes/(?P<name>[^/]+)", self._put_compute),
            ("DELETE", ws + r"/computes/(?P<name>[^/]+)", self._delete_compute),
            (
                "GET",
                r"/subscriptions/[^/]+/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)"
                r"/vmSizes",
                self._vm_sizes,
            ),
            (
                "GET",
                r"/subscriptions/[^/]+/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)"
                r"/usages",
                self._usages,
            ),
            ("GET", ws + r"/datastores", self._datastores),
            ("GET", ws + r"/datastores/(?P<name>[^/]+)", self._datastore),
            ("POST", ws + r"/datastores/(?P<name>[^/]+)/listSecrets", self._datastore_secrets),
            ("PUT", ws + r"/jobs/(?P<name>[^/]+)", self._put_job),
            ("GET", ws + r"/jobs/(?P<name>[^/]+)", self._get_job),
            ("GET", ws + r"/models/(?P<name>[^/]+)/versions", self._list_models),
            ("PUT", ws + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._put_model),
            ("GET", ws + r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)", self._get_model),
            ("GET", ws + r"/onlineEndpoints/(?P<name>[^/]+)", self._get_endpoint),
            ("PUT", ws + r"/onlineEndpoints/(?P<name>[^/]+)", self._put_endpoint),
            ("DELETE", ws + r"/onlineEndpoints/(?P<name>[^/]+)", self._delete_endpoint),
            ("POST", ws + r"/onlineEndpoints/(?P<name>[^/]+)/listKeys", self._list_keys),
            ("GET", ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)/deployments", self._list_deployments),
            (
                "GET",
                ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)/deployments/(?P<name>[^/]+)",
                self._get_deployment,
            ),
            (
                "PUT",
                ws + r"/onlineEndpoints/(?P<endpoint>[^/]+)/deployments/(?P<name>[^/]+)",
                self._put_deployment,
            ),
            # Serverless endpoints: azure-ai-ml's ServerlessEndpointOperations (its arm_ml_service client);
            # shapes from Azure/azure-rest-api-specs machinelearningservices stable/2025-06-01
            # examples/Workspace/ServerlessEndpoint/{createOrUpdate,get,delete,listKeys}.json.
            ("GET", ws + r"/serverlessEndpoints/(?P<name>[^/]+)", self._get_serverless),
            ("PUT", ws + r"/serverlessEndpoints/(?P<name>[^/]+)", self._put_serverless),
            ("DELETE", ws + r"/serverlessEndpoints/(?P<name>[^/]+)", self._delete_serverless),
            ("POST", ws + r"/serverlessEndpoints/(?P<name>[^/]+)/listKeys", self._serverless_keys),
            ("GET", ops + r"/mfeOperationsStatus/(?P<op>[^/]+)", self._operation_status),
            ("GET", ops + r"/computeOperationsStatus/(?P<op>[^/]+)", self._operation_status),
            *self.mlflow.routes(),
            *self.mlflow.history_routes(),
            ("GET", r"/discovery", self._workspace_discovery),
        ]

    # --- registry --------------------------------------------------------------------------------

    def _discovery(self, r: Recorded, registry: str) -> tuple[int, dict[str, str], Any]:
        if registry != REGISTRY:
            return _error(404, "RegistryNotFound", f"registry {registry} was not found")
        return _json(
            200,
            {
                "registryId": "5aee441d-881a-4940-bd08-edf8e04ff23b",
                "registryName": registry,
                "tenantId": "00000000-0000-0000-0000-000000000000",
                "primaryRegion": "eastus",
                "regions": ["eastus", "eastus2", "westus3"],
                "subscriptionId": REGISTRY_SUBSCRIPTION,
                "resourceGroup": REGISTRY_RESOURCE_GROUP,
                "workspaceName": None,
                "primaryRegionResourceProviderUri": REGISTRY_MFE,
                "registryFqdns": {
                    "eastus": {"uri": "https://eastus.api.azureml.ms"},
                    "eastus2": {"uri": "https://eastus2.api.azureml.ms"},
                },
                "intellectualPropertyPublisher": None,
                "isTradeRestricted": False,
            },
        )

    def _model_containers(self, r: Recorded, registry: str) -> tuple[int, dict[str, str], Any]:
        value = []
        for name, versions in sorted(self.registry_models.items()):
            latest = list(versions.values())[-1]["properties"]
            value.append(
                {
                    "id": f"azureml://registries/{registry}/models/{name}",
                    "name": name,
                    "type": "models",
                    "properties": {
                        "description": latest["description"],
                        "tags": latest["tags"],
                        "properties": latest["properties"],
                        "isArchived": latest["isArchived"],
                        "latestVersion": list(versions)[-1],
                        "nextVersion": None,
                    },
                    "systemData": _system_data(),
                }
            )
        return _json(200, {"value": value, "nextLink": None})

    def _latest_registry_model(
        self, r: Recorded, registry: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        versions = self.registry_models.get(name, {})
        value = [copy.deepcopy(list(versions.values())[-1])] if versions else []
        return _json(200, {"value": value})

    def _registry_model(
        self, r: Recorded, registry: str, name: str, version: str
    ) -> tuple[int, dict[str, str], Any]:
        found = self.registry_models.get(name, {}).get(version)
        if found is None:
            return _error(404, "UserError", f"Model {name}:{version} not found in registry {registry}")
        return _json(200, copy.deepcopy(found))

    def _latest_component(self, r: Recorded, registry: str, name: str) -> tuple[int, dict[str, str], Any]:
        versions = self.components.get(name, {})
        value = [copy.deepcopy(list(versions.values())[-1])] if versions else []
        return _json(200, {"value": value})

    def _component(
        self, r: Recorded, registry: str, name: str, version: str
    ) -> tuple[int, dict[str, str], Any]:
        found = self.components.get(name, {}).get(version)
        if found is None:
            return _error(404, "UserError", f"Component {name}:{version} not found in registry {registry}")
        return _json(200, copy.deepcopy(found))

    # --- workspace -------------------------------------------------------------------------------

    def _check_ws(self, sub: str, rg: str, ws: str) -> tuple[int, dict[str, str], Any] | None:
        if (sub, rg, ws) != (SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE):
            return _error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.MachineLearningServices/workspaces/{ws}' under resource group "
                f"'{rg}' was not found.",
            )
        return None

    def _workspace(self, r: Recorded, sub: str, rg: str, ws: str) -> tuple[int, dict[str, str], Any]:
        missing = self._check_ws(sub, rg, ws)
        if missing:
            return missing
        rg_id = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers"
        return _json(
            200,
            {
                "id": WS_ID,
                "name": WORKSPACE,
                "type": "Microsoft.MachineLearningServices/workspaces",
                "location": LOCATION,
                "kind": "Default",
                "tags": {},
                "identity": {
                    "type": "SystemAssigned",
                    "principalId": "11111111-2222-3333-4444-555555555555",
                    "tenantId": "00000000-0000-0000-0000-000000000000",
                },
                "sku": {"name": "Basic", "tier": "Basic"},
                "properties": {
                    "friendlyName": WORKSPACE,
                    "description": "",
                    "storageAccount": f"{rg_id}/Microsoft.Storage/storageAccounts/{STORAGE_ACCOUNT}",
                    "keyVault": f"{rg_id}/Microsoft.Keyvault/vaults/kvftctltest",
                    "applicationInsights": f"{rg_id}/Microsoft.insights/components/aiftctltest",
                    "containerRegistry": None,
                    "discoveryUrl": f"https://{LOCATION}.api.azureml.ms/discovery",
                    "mlFlowTrackingUri": (f"azureml://{LOCATION}.api.azureml.ms/mlflow/v1.0{WS_ID}"),
                    "workspaceId": "8d2c6f4e-0c3b-4f2a-9b1d-7e6f5a4b3c2d",
                    "provisioningState": "Succeeded",
                    "hbiWorkspace": False,
                    "publicNetworkAccess": "Enabled",
                    "v1LegacyMode": False,
                    "tenantId": "00000000-0000-0000-0000-000000000000",
                },
                "systemData": _system_data(),
            },
        )

    def _compute_body(self, name: str, props: dict[str, Any], state: str) -> dict[str, Any]:
        scale = props.get("scaleSettings") or {}
        return {
            "id": f"{WS_ID}/computes/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/computes",
            "location": LOCATION,
            "tags": {},
            "properties": {
                "createdOn": _now(),
                "modifiedOn": _now(),
                "disableLocalAuth": True,
                "description": None,
                "resourceId": None,
                "computeType": "AmlCompute",
                "computeLocation": LOCATION,
                "provisioningState": state,
                "provisioningErrors": None,
                "isAttachedCompute": False,
                "properties": {
                    "vmSize": props.get("vmSize"),
                    "vmPriority": props.get("vmPriority", "Dedicated"),
                    "scaleSettings": {
                        "maxNodeCount": scale.get("maxNodeCount", 1),
                        "minNodeCount": scale.get("minNodeCount", 0),
                        "nodeIdleTimeBeforeScaleDown": scale.get("nodeIdleTimeBeforeScaleDown", "PT2M"),
                    },
                    "subnet": None,
                    "currentNodeCount": 0,
                    "targetNodeCount": 0,
                    "nodeStateCounts": {
                        "preparingNodeCount": 0,
                        "runningNodeCount": 0,
                        "idleNodeCount": 0,
                        "unusableNodeCount": 0,
                        "leavingNodeCount": 0,
                        "preemptedNodeCount": 0,
                    },
                    "allocationState": "Steady",
                    "allocationStateTransitionTime": _now(),
                    "errors": None,
                    "remoteLoginPortPublicAccess": "Disabled",
                    "osType": "Linux",
                    "virtualMachineImage": None,
                    "isolatedNetwork": False,
                    "propertyBag": {},
                },
            },
        }

    def _get_compute(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        found = self.computes.get(name)
        if found is None:
            return _error(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.MachineLearningServices/workspaces/{ws}/computes/{name}' "
                f"under resource group '{rg}' was not found.",
            )
        return _json(200, copy.deepcopy(found))

    def _operation(self, on_done: Callable[[], None], fail_with: str | None = None, kind: str = "mfe") -> str:
        op = uuid.uuid4().hex
        self.operations[op] = Operation(polls=self.lro_polls, on_done=on_done, fail_with=fail_with)
        return (
            f"{ARM}/subscriptions/{SUBSCRIPTION}/providers/Microsoft.MachineLearningServices/locations/"
            f"{LOCATION}/{kind}OperationsStatus/{op}?api-version=2023-08-01-preview&service=new"
        )

    def _operation_status(self, r: Recorded, op: str) -> tuple[int, dict[str, str], Any]:
        operation = self.operations.get(op)
        if operation is None:
            return _error(404, "NotFound", f"operation {op} not found")
        if operation.polls > 0:
            operation.polls -= 1
            return _json(200, {"status": "InProgress"})
        if not operation.done:
            operation.done = True
            operation.on_done()
        if operation.fail_with:
            return _json(
                200,
                {"status": "Failed", "error": {"code": "DeploymentFailed", "message": operation.fail_with}},
            )
        return _json(200, {"status": "Succeeded"})

    def _put_compute(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        props = (r.body or {}).get("properties", {}).get("properties", {})
        self.computes[name] = self._compute_body(name, props, "Creating")
        final = self.compute_final_state

        def done() -> None:
            self.computes[name]["properties"]["provisioningState"] = final
            if final == "Failed":
                self.computes[name]["properties"]["provisioningErrors"] = [
                    {"error": {"code": "QuotaExceeded", "message": "Not enough quota for the VM family"}}
                ]

        status_url = self._operation(done, kind="compute")
        return _json(201, copy.deepcopy(self.computes[name]), {"Azure-AsyncOperation": status_url})

    def _delete_compute(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        if name not in self.computes:
            return _json(204, None)
        self.computes[name]["properties"]["provisioningState"] = "Deleting"
        status_url = self._operation(lambda: self.computes.pop(name, None), kind="compute")
        return _json(202, None, {"Azure-AsyncOperation": status_url, "Location": status_url})

    def _vm_sizes(self, r: Recorded, loc: str) -> tuple[int, dict[str, str], Any]:
        value = [
            {
                "name": name,
                "family": family,
                "vCPUs": cpus,
                "gpus": gpus,
                "osVhdSizeMB": 1047552,
                "maxResourceVolumeMB": 65536,
                "memoryGB": memory,
                "lowPriorityCapable": True,
                "premiumIO": True,
                "supportedComputeTypes": ["AmlCompute", "ComputeInstance"],
            }
            for name, family, cpus, gpus, memory in VM_SIZES
        ]
        return _json(200, {"value": value})

    def _workspace_discovery(self, r: Recorded) -> tuple[int, dict[str, str], Any]:
        """The workspace's discoveryUrl: the service base URLs azure-ai-ml looks up ("api" for run
        history), keys as in the discovery documents the SDK reads (WorkspaceDiscoveryUrlKey)."""
        base = f"https://{LOCATION}.api.azureml.ms"
        keys = (
            "api",
            "catalog",
            "experimentation",
            "gallery",
            "history",
            "hyperdrive",
            "labeling",
            "modelmanagement",
            "pipelines",
        )
        return _json(200, {**{key: base for key in keys}, "studio": "https://ml.azure.com"})

    def _usages(self, r: Recorded, loc: str) -> tuple[int, dict[str, str], Any]:
        """Shaped after azure-rest-api-specs .../stable/2025-06-01/examples/Usage/list.json: the regional
        total and one `vmFamily/usages` entry per family ("Standard NCADSA100v4 Family Cluster Dedicated
        vCPUs" for the family standardNCADSA100v4Family of the VM sizes list)."""
        sub_id = f"/subscriptions/{SUBSCRIPTION}/usages"

        def entry(kind: str, name: str, used: int, limit: int, suffix: str = "") -> dict[str, Any]:
            return {
                "id": sub_id + suffix,
                "amlWorkspaceLocation": loc,
                "type": f"Microsoft.MachineLearningServices/{kind}/usages",
                "currentValue": used,
                "limit": limit,
                "name": {"value": name, "localizedValue": name},
                "unit": "Count",
            }

        value = [
            entry("totalCores", "Clusters", 0, 100),
            entry("dedicatedCores", "Total Cluster Dedicated Regional vCPUs", *self.regional_quota),
        ]
        for family, (used, limit) in self.quota.items():
            short = family.removeprefix("standard").removesuffix("Family")
            name = f"Standard {short} Family Cluster Dedicated vCPUs"
            value.append(entry("vmFamily", name, used, limit, "/" + name.replace(" ", "_")))
        value.append(entry("lowPriorityCores", "Total Cluster LowPriority Regional vCPUs", 0, 100))
        return _json(200, {"value": value, "nextLink": None})

    def _datastore_body(self) -> dict[str, Any]:
        return {
            "id": f"{WS_ID}/datastores/workspaceblobstore",
            "name": "workspaceblobstore",
            "type": "Microsoft.MachineLearningServices/workspaces/datastores",
            "properties": {
                "description": None,
                "tags": {},
                "properties": {},
                "isDefault": True,
                "credentials": {"credentialsType": "AccountKey"},
                "datastoreType": "AzureBlob",
                "accountName": STORAGE_ACCOUNT,
                "containerName": CONTAINER,
                "endpoint": "core.windows.net",
                "protocol": "https",
                "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity",
            },
            "systemData": _system_data(),
        }

    def _datastores(self, r: Recorded, sub: str, rg: str, ws: str) -> tuple[int, dict[str, str], Any]:
        return _json(200, {"value": [self._datastore_body()], "nextLink": None})

    def _datastore(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        if name != "workspaceblobstore":
            return _error(404, "UserError", f"datastore {name} not found")
        return _json(200, self._datastore_body())

    def _datastore_secrets(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        key = base64.b64encode(b"fake-storage-account-key").decode()
        return _json(200, {"secretsType": "AccountKey", "key": key})

    # --- jobs ------------------------------------------------------------------------------------

    def _put_job(self, r: Recorded, sub: str, rg: str, ws: str, name: str) -> tuple[int, dict[str, str], Any]:
        if name in self.jobs:
            return _error(
                409, "UserError", f"A job with this name already exists: {name}. Job names must be unique."
            )
        body = copy.deepcopy(r.body or {})
        props = body.setdefault("properties", {})
        props["status"] = self.job_states[0]
        props["services"] = {
            "Tracking": {
                "jobServiceType": "Tracking",
                "endpoint": f"azureml://{LOCATION}.api.azureml.ms/mlflow/v1.0{WS_ID}",
            },
            "Studio": {
                "jobServiceType": "Studio",
                "endpoint": f"https://ml.azure.com/runs/{name}?wsid={WS_ID}",
            },
        }
        body.update(
            {
                "id": f"{WS_ID}/jobs/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/jobs",
                "systemData": _system_data(),
            }
        )
        self.jobs[name] = body
        self.job_polls[name] = 0
        self.mlflow.job_submitted(name, body)
        return _json(201, copy.deepcopy(body))

    def _get_job(self, r: Recorded, sub: str, rg: str, ws: str, name: str) -> tuple[int, dict[str, str], Any]:
        job = self.jobs.get(name)
        if job is None:
            return _error(404, "UserError", f"Job {name} not found")
        props = job["properties"]
        if props["status"] not in TERMINAL_JOB_STATES:
            self.job_polls[name] += 1
            index = min(self.job_polls[name], len(self.job_states) - 1)
            props["status"] = self.job_states[index]
            if props["status"] == "Completed" and props.get("jobType") == "FineTuning":
                self._register_finetuned(name, props)
        return _json(200, copy.deepcopy(job))

    def _register_finetuned(self, job: str, props: dict[str, Any]) -> None:
        """A fine-tuning job that completed registers its model in the workspace, named by its
        `registered_model` output, version 1 (azureml-examples' model-as-a-service notebook deploys
        `models/<output name>/versions/1` after the job)."""
        output = (props.get("outputs") or {}).get("registered_model") or {}
        name = output.get("assetName")
        if not name or "1" in self.models.get(name, {}):
            return
        self.models.setdefault(name, {})["1"] = {
            "id": f"{WS_ID}/models/{name}/versions/1",
            "name": "1",
            "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
            "systemData": _system_data(),
            "properties": {
                "description": f"fine-tuned by job {job}",
                "tags": {},
                "properties": {},
                "isArchived": False,
                "isAnonymous": False,
                "modelType": "mlflow_model",
                "modelUri": self._datastore_uri(f"azureml://jobs/{job}/outputs/registered_model"),
                "jobName": job,
                "provisioningState": "Succeeded",
                "flavors": {"python_function": {"data": {"loader_module": "mlflow.transformers"}}},
            },
        }

    # --- models ----------------------------------------------------------------------------------

    def _list_models(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        versions = list(self.models.get(name, {}).values())[::-1]
        if r.query.get("$top"):
            versions = versions[: int(r.query["$top"])]
        return _json(200, {"value": copy.deepcopy(versions), "nextLink": None})

    def _put_model(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str, version: str
    ) -> tuple[int, dict[str, str], Any]:
        existing = self.models.get(name, {}).get(version)
        if existing is not None:
            return _error(409, "UserError", f"Model {name}:{version} already exists")
        body = copy.deepcopy(r.body or {})
        body.update(
            {
                "id": f"{WS_ID}/models/{name}/versions/{version}",
                "name": version,
                "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
                "systemData": _system_data(),
            }
        )
        props = body.setdefault("properties", {})
        props["modelUri"] = self._datastore_uri(str(props.get("modelUri") or ""))
        props["provisioningState"] = "Succeeded"
        props.setdefault("isArchived", False)
        props.setdefault("isAnonymous", False)
        # The service reads the MLflow model's flavors from its MLmodel file.
        if props.get("modelType") == "mlflow_model" and not props.get("flavors"):
            props["flavors"] = {"python_function": {"data": {"loader_module": "mlflow.transformers"}}}
        self.models.setdefault(name, {})[version] = body
        return _json(200, copy.deepcopy(body))

    def _datastore_uri(self, uri: str) -> str:
        """A job output's URI as the service answers it: the datastore path the output lies at."""
        found = JOB_OUTPUT.match(uri)
        if found is None:
            return uri
        return (
            f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/workspaces/{WORKSPACE}"
            f"/datastores/workspaceblobstore/paths/azureml/{found['job']}/{found['output']}/"
        )

    def _get_model(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str, version: str
    ) -> tuple[int, dict[str, str], Any]:
        found = self.models.get(name, {}).get(version)
        if found is None:
            return _error(404, "UserError", f"Model {name}:{version} not found")
        return _json(200, copy.deepcopy(found))

    # --- online endpoints ------------------------------------------------------------------------

    def _endpoint_not_found(self, name: str) -> tuple[int, dict[str, str], Any]:
        return _error(
            404,
            "ResourceNotFound",
            f"The Resource 'Microsoft.MachineLearningServices/workspaces/{WORKSPACE}/onlineEndpoints/{name}'"
            f" under resource group '{RESOURCE_GROUP}' was not found.",
        )

    def _get_endpoint(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        found = self.endpoints.get(name)
        return _json(200, copy.deepcopy(found)) if found else self._endpoint_not_found(name)

    def _put_endpoint(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        body = copy.deepcopy(r.body or {})
        props = body.setdefault("properties", {})
        traffic = props.get("traffic") or {}
        unknown = sorted(set(traffic) - set(self.deployments.get(name, {})))
        if unknown:
            return _error(400, "BadArgument", f"Traffic refers to deployments that do not exist: {unknown}")
        creating = name not in self.endpoints
        props.update(
            {
                "scoringUri": f"https://{name}.{LOCATION}.inference.ml.azure.com/score",
                "swaggerUri": f"https://{name}.{LOCATION}.inference.ml.azure.com/swagger.json",
                "provisioningState": "Creating" if creating else "Updating",
                "traffic": traffic,
                "mirrorTraffic": props.get("mirrorTraffic") or {},
                "publicNetworkAccess": props.get("publicNetworkAccess", "Enabled"),
            }
        )
        body.update(
            {
                "id": f"{WS_ID}/onlineEndpoints/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
                "location": body.get("location") or LOCATION,
                "kind": "Managed",
                "identity": {
                    "type": "SystemAssigned",
                    "principalId": "22222222-3333-4444-5555-666666666666",
                    "tenantId": "00000000-0000-0000-0000-000000000000",
                },
                "systemData": _system_data(),
            }
        )
        self.endpoints[name] = body

        def done() -> None:
            if name in self.endpoints:
                self.endpoints[name]["properties"]["provisioningState"] = "Succeeded"

        status_url = self._operation(done)
        return _json(201 if creating else 200, copy.deepcopy(body), {"Azure-AsyncOperation": status_url})

    def _delete_endpoint(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        if name not in self.endpoints:
            return _json(204, None)
        self.endpoints[name]["properties"]["provisioningState"] = "Deleting"

        def done() -> None:
            self.endpoints.pop(name, None)
            self.deployments.pop(name, None)

        status_url = self._operation(done)
        return _json(202, None, {"Azure-AsyncOperation": status_url, "Location": status_url})

    def _list_keys(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        if name not in self.endpoints:
            return self._endpoint_not_found(name)
        return _json(200, {"primaryKey": ENDPOINT_KEY, "secondaryKey": ENDPOINT_KEY[::-1]})

    def _list_deployments(
        self, r: Recorded, sub: str, rg: str, ws: str, endpoint: str
    ) -> tuple[int, dict[str, str], Any]:
        if endpoint not in self.endpoints:
            return self._endpoint_not_found(endpoint)
        value = [copy.deepcopy(d) for d in self.deployments.get(endpoint, {}).values()]
        return _json(200, {"value": value, "nextLink": None})

    def _get_deployment(
        self, r: Recorded, sub: str, rg: str, ws: str, endpoint: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        found = self.deployments.get(endpoint, {}).get(name)
        if found is None:
            return _error(404, "ResourceNotFound", f"Deployment {name} of endpoint {endpoint} was not found.")
        return _json(200, copy.deepcopy(found))

    def _put_deployment(
        self, r: Recorded, sub: str, rg: str, ws: str, endpoint: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        if endpoint not in self.endpoints:
            return self._endpoint_not_found(endpoint)
        body = copy.deepcopy(r.body or {})
        props = body.setdefault("properties", {})
        # What the service fills in when the request leaves it out.
        probe = {"initialDelay": "PT10S", "period": "PT10S", "timeout": "PT2S", "successThreshold": 1}
        props["livenessProbe"] = {**probe, "failureThreshold": 30, **(props.get("livenessProbe") or {})}
        props["readinessProbe"] = {**probe, "failureThreshold": 30, **(props.get("readinessProbe") or {})}
        props["requestSettings"] = {
            "requestTimeout": "PT5S",
            "maxConcurrentRequestsPerInstance": 1,
            "maxQueueWait": "PT0.5S",
            **(props.get("requestSettings") or {}),
        }
        props.setdefault("scaleSettings", {"scaleType": "Default"})
        props.setdefault("appInsightsEnabled", False)
        props.setdefault("egressPublicNetworkAccess", "Enabled")
        props["provisioningState"] = "Creating"
        body.update(
            {
                "id": f"{WS_ID}/onlineEndpoints/{endpoint}/deployments/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
                "location": body.get("location") or LOCATION,
                "kind": "Managed",
                "systemData": _system_data(),
            }
        )
        self.deployments.setdefault(endpoint, {})[name] = body
        final = self.deployment_final_state

        def done() -> None:
            found = self.deployments.get(endpoint, {}).get(name)
            if found is not None:
                found["properties"]["provisioningState"] = final

        fail = "Deployment failed: the container crashed (exit code 137)" if final == "Failed" else None
        status_url = self._operation(done, fail_with=fail)
        return _json(201, copy.deepcopy(body), {"Azure-AsyncOperation": status_url})

    # --- serverless endpoints --------------------------------------------------------------------

    def _serverless_not_found(self, name: str) -> tuple[int, dict[str, str], Any]:
        return _error(
            404,
            "ResourceNotFound",
            f"The Resource 'Microsoft.MachineLearningServices/workspaces/{WORKSPACE}/serverlessEndpoints/"
            f"{name}' under resource group '{RESOURCE_GROUP}' was not found.",
        )

    def _get_serverless(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        op = self.serverless_operations.get(name)
        if op in self.operations and not self.operations[op].done:
            self._operation_status(r, op)  # the service goes on creating it, whoever polls
        found = self.serverless_endpoints.get(name)
        return _json(200, copy.deepcopy(found)) if found else self._serverless_not_found(name)

    def _put_serverless(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        body = copy.deepcopy(r.body or {})
        props = body.setdefault("properties", {})
        model_id = str((props.get("modelSettings") or {}).get("modelId") or "")
        # The service deploys a workspace model by its location-scoped id (azureml://locations/<region>/
        # workspaces/<workspace id>/models/<name>/versions/<version>), as the example builds it.
        match = re.fullmatch(
            r"azureml://locations/[^/]+/workspaces/[^/]+/models/([^/]+)/versions/([^/]+)", model_id
        )
        if match is None or match.group(2) not in self.models.get(match.group(1), {}):
            return _error(
                400, "BadRequest", f"Model {model_id!r} was not found or cannot be deployed serverless"
            )
        creating = name not in self.serverless_endpoints
        props.update(
            {
                "authMode": props.get("authMode") or "Key",
                "inferenceEndpoint": {"uri": f"https://{name}.{LOCATION}.models.ai.azure.com", "headers": {}},
                "provisioningState": "Creating" if creating else "Updating",
                "endpointState": "Online",
                "contentSafety": {"contentSafetyStatus": "Enabled"},
            }
        )
        body.update(
            {
                "id": f"{WS_ID}/serverlessEndpoints/{name}",
                "name": name,
                "type": "Microsoft.MachineLearningServices/workspaces/serverlessEndpoints",
                "location": body.get("location") or LOCATION,
                "systemData": _system_data(),
            }
        )
        self.serverless_endpoints[name] = body

        def done() -> None:
            if name in self.serverless_endpoints:
                self.serverless_endpoints[name]["properties"]["provisioningState"] = "Succeeded"

        status_url = self._operation(done)
        self.serverless_operations[name] = status_url.split("/")[-1].split("?")[0]
        return _json(201 if creating else 200, copy.deepcopy(body), {"Azure-AsyncOperation": status_url})

    def _delete_serverless(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        if name not in self.serverless_endpoints:
            return _json(204, None)
        self.serverless_endpoints[name]["properties"]["provisioningState"] = "Deleting"

        def done() -> None:
            self.serverless_endpoints.pop(name, None)

        status_url = self._operation(done)
        return _json(202, None, {"Azure-AsyncOperation": status_url, "Location": status_url})

    def _serverless_keys(
        self, r: Recorded, sub: str, rg: str, ws: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        if name not in self.serverless_endpoints:
            return self._serverless_not_found(name)
        return _json(200, {"primaryKey": ENDPOINT_KEY, "secondaryKey": ENDPOINT_KEY[::-1]})

    def _chat_completion(self, r: Recorded) -> tuple[int, dict[str, str], Any]:
        """A serverless endpoint's OpenAI-compatible route (the example posts to
        `<scoring_uri>/v1/chat/completions` with `Authorization: <key>`): a chat.completion body."""
        name = r.host.split(".")[0]
        if r.method != "POST" or r.path != "/v1/chat/completions" or name not in self.serverless_endpoints:
            return _error(404, "NotFound", "no such endpoint")
        if r.auth not in ("endpoint-key", "Bearer endpoint-key"):
            return _json(
                401, {"error": {"code": "Unauthorized", "message": "Access denied due to invalid key."}}
            )
        messages = r.body.get("messages") if isinstance(r.body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _json(400, {"error": {"code": "Invalid input", "message": "messages is required"}})
        return _json(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.chat_answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
            },
        )

    # --- scoring and blob storage ----------------------------------------------------------------

    def _score(self, r: Recorded) -> tuple[int, dict[str, str], Any]:
        name = r.host.split(".")[0]
        if r.method != "POST" or r.path != "/score" or name not in self.endpoints:
            return _error(404, "NotFound", "no such endpoint")
        if r.auth != "Bearer endpoint-key":
            return _json(401, {"message": "Key based authentication is not permitted on this endpoint."})
        deployment = next((v for k, v in r.headers.items() if k.lower() == "azureml-model-deployment"), None)
        if deployment and deployment not in self.deployments.get(name, {}):
            return _json(404, {"message": f"No deployment {deployment}"})
        return self.score_status, {"Content-Type": "application/json"}, self.score_body

    def _blob(self, r: Recorded, raw_body: bytes | None) -> tuple[int, dict[str, str], Any]:
        account = r.host.split(".")[0]
        key = f"{account}{r.path}"
        headers = {
            "x-ms-version": "2025-05-05",
            "ETag": '"0x8DD714562F435D1"',
            "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
        }
        if r.query.get("comp") == "metadata" and r.method == "PUT":
            if key not in self.blobs:
                return 404, {**headers, "x-ms-error-code": "BlobNotFound"}, b""
            self.blob_metadata[key] = {
                k.lower()[len("x-ms-meta-") :]: v
                for k, v in r.headers.items()
                if k.lower().startswith("x-ms-meta-")
            }
            return 200, headers, b""
        if r.method == "PUT":
            self.blobs[key] = raw_body or b""
            return 201, headers, b""
        if r.method == "GET" and r.query.get("restype") == "container" and r.query.get("comp") == "list":
            return self._list_blobs(r, key, headers)
        if r.method in ("HEAD", "GET"):
            if key not in self.blobs:
                return 404, {**headers, "x-ms-error-code": "BlobNotFound"}, b""
            meta = {f"x-ms-meta-{k}": v for k, v in self.blob_metadata.get(key, {}).items()}
            blob_headers = {
                **headers,
                **meta,
                "x-ms-blob-type": "BlockBlob",
                "Content-Type": "application/octet-stream",
            }
            data = self.blobs[key]
            if r.method == "HEAD":
                return 200, {**blob_headers, "Content-Length": str(len(data))}, b""
            wanted = next((v for k, v in r.headers.items() if k.lower() in ("x-ms-range", "range")), None)
            if wanted is None:
                return 200, blob_headers, data
            # Get Blob with a range (how azure-storage-blob downloads): 206 with Content-Range; a range
            # that starts past the end (any range of an empty blob) is 416 InvalidRange.
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return (
                    416,
                    {**headers, "x-ms-error-code": "InvalidRange", "Content-Range": f"bytes */{len(data)}"},
                    b"",
                )
            chunk = data[start : end + 1]
            ranged = {**blob_headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            return 206, {**ranged, "Content-Length": str(len(chunk))}, chunk
        self.unhandled.append(r)
        return 400, headers, b""

    def _list_blobs(self, r: Recorded, key: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        """List Blobs of a container (one page): the blobs under `prefix`, and with a `delimiter` the
        "folders" one level down as BlobPrefix entries, in the service's EnumerationResults XML."""
        container = key.split("/")[1]
        prefix, delimiter = r.query.get("prefix", ""), r.query.get("delimiter")
        start = f"{key}/"
        names = sorted(k[len(start) :] for k in self.blobs if k.startswith(start))
        blobs, prefixes = [], []
        for name in names:
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                folder = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                if folder not in prefixes:
                    prefixes.append(folder)
                continue
            blobs.append(name)
        modified = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        entries = [
            f"<Blob><Name>{escape(name)}</Name><Properties><Creation-Time>{modified}</Creation-Time>"
            f"<Last-Modified>{modified}</Last-Modified><Etag>0x8DD714562F435D1</Etag>"
            f"<Content-Length>{len(self.blobs[start + name])}</Content-Length>"
            "<Content-Type>application/octet-stream</Content-Type><BlobType>BlockBlob</BlobType>"
            "<AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred>"
            "<LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState>"
            "<ServerEncrypted>true</ServerEncrypted></Properties><Metadata /></Blob>"
            for name in blobs
        ] + [f"<BlobPrefix><Name>{escape(folder)}</Name></BlobPrefix>" for folder in prefixes]
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<EnumerationResults ServiceEndpoint="https://{STORAGE_ACCOUNT}.blob.core.windows.net/" '
            f'ContainerName="{escape(container)}"><Prefix>{escape(prefix)}</Prefix>'
            + (f"<Delimiter>{escape(delimiter)}</Delimiter>" if delimiter else "")
            + f"<Blobs>{''.join(entries)}</Blobs><NextMarker /></EnumerationResults>"
        )
        return 200, {**headers, "Content-Type": "application/xml"}, body.encode("utf-8")
