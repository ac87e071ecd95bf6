"""The typed stage records of the state file (like DVC's schema for dvc.lock).

`StageRecord` is one stage's record; `OUTPUTS` holds, per stage, the model of the outputs both backends
record (the fields later stages and `ftctl status` read, typed; anything else a backend records is
kept as it is). The state file is validated against these on load, so a hand-edited or damaged record
is refused with the stage and field named, never met later as a TypeError.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError


def _iso_time(value: str | None) -> str | None:
    if value is not None:
        datetime.fromisoformat(value)  # ValueError -> a validation error naming the field
    return value


IsoTime = Annotated["str | None", AfterValidator(_iso_time)]
Count = Annotated[int, Field(ge=0)]


class _Outputs(BaseModel):
    """Outputs are partial while a stage runs (what it checkpointed), so every field is optional."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class AuthOutputs(_Outputs):
    tracking_uri: str | None = None
    workspace: str | None = None


class PickModelOutputs(_Outputs):
    name: str | None = None
    path: str | None = None
    content_hash: str | None = None
    parameters: Count | None = None
    context_length: Count | None = None
    model_specific_defaults: dict[str, Any] = {}
    finetune_compute_allow_list: list[str] | None = None
    inference_compute_allow_list: list[str] | None = None


class CheckComputeOutputs(_Outputs):
    device: str | None = None
    size: str | None = None
    name: str | None = None
    precision: str | None = None
    gpus_per_node: Count | None = None
    cpu_cores: Count | None = None


class SplitFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    path: str
    rows: Count
    sha256: str | None = None
    bytes: Count | None = None
    dropped: Count = 0


class PrepareDataOutputs(_Outputs):
    dataset: str | None = None
    download_dir: str | None = None
    files: dict[str, SplitFile] = {}


class SubmitOutputs(_Outputs):
    job_id: str | None = None
    job_dir: str | None = None
    job_name: str | None = None
    display_name: str | None = None
    pid: Count | None = None
    mlflow_run_id: str | None = None
    model_dir: str | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    params: dict[str, Any] | None = None


class RegisterOutputs(_Outputs):
    model_name: str | None = None
    version: str | None = None
    model_uri: str | None = None
    tags: dict[str, str] = {}


class DeployOutputs(_Outputs):
    endpoint_name: str | None = None
    deployment_name: str | None = None
    scoring_uri: str | None = None
    url: str | None = None
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    pid: Count | None = None
    key_file: str | None = None
    instance_type: str | None = None
    expires_at: IsoTime = None


class ScoreOutputs(_Outputs):
    output_chars: Count | None = None
    latency_ms: float | None = None


class TeardownOutputs(_Outputs):
    endpoint_name: str | None = None
    stopped: bool | None = None


OUTPUTS: dict[str, type[_Outputs]] = {
    "auth": AuthOutputs,
    "pick-model": PickModelOutputs,
    "check-compute": CheckComputeOutputs,
    "prepare-data": PrepareDataOutputs,
    "submit": SubmitOutputs,
    "register": RegisterOutputs,
    "deploy": DeployOutputs,
    "score": ScoreOutputs,
    "teardown": TeardownOutputs,
}


class Fingerprint(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    params: dict[str, Any]
    inputs: dict[str, str]
    upstream: dict[str, str]


class StageError(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    type: str
    message: str


class StageRecord(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    status: Literal["pending", "running", "succeeded", "failed"]
    attempt: Count = 0
    started_at: IsoTime = None
    ended_at: IsoTime = None
    fingerprint: Fingerprint | None = None
    outputs: dict[str, Any] = {}
    # Signatures of the files a stage produced, taken when it succeeded (DVC's `outs`).
    output_signatures: dict[str, str] = {}
    error: StageError | None = None


def _where(error: Any) -> str:
    return ".".join(str(part) for part in error["loc"]) or "(the record)"


def check_record(stage: str, record: Any) -> str | None:
    """Why `record` is not a valid record of `stage` (None when it is): the first bad field."""
    try:
        StageRecord.model_validate(record)
        model = OUTPUTS.get(stage)
        if model is not None:
            model.model_validate(record.get("outputs") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        prefix = "" if isinstance(exc.title, str) and exc.title == "StageRecord" else "outputs."
        return f"{prefix}{_where(first)}: {first['msg']}"
    return None


def strict_json(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: the state file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value
