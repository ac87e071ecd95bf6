"""The typed stage records of the state file (like DVC's schema for dvc.lock).

`StageRecord` is one stage's record; `OUTPUTS` holds, per stage, the model of the outputs both backends
record (the fields later stages and `ftctl status` read, typed; anything else a backend records is
kept as it is). The state file is validated against these on load, so a hand-edited or damaged record
is refused with the stage and field named, never met later as a TypeError; the runner validates what a
stage returns the same way before recording it (`check_outputs`).

Stages read what earlier stages recorded through a `StateView` (`call.upstream.<stage>`): the typed
models, read-only.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ftctl import pydantic_plugins


def _iso_time(value: str | None) -> str | None:
    """An ISO 8601 time with its UTC offset: ftctl compares times with now (UTC), which a time
    without an offset cannot be compared with."""
    if value is not None and datetime.fromisoformat(value).tzinfo is None:  # ValueError names the field
        raise ValueError("a time without a UTC offset (ftctl writes them as ...+00:00)")
    return value


IsoTime = Annotated["str | None", AfterValidator(_iso_time)]
Count = Annotated[int, Field(ge=0)]


pydantic_plugins.suspend()  # until resume() below: ftctl.pydantic_plugins


class _Outputs(BaseModel):
    """Outputs are partial while a stage runs (what it checkpointed), so every field is optional."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)

    def need(self, field: str) -> Any:
        """A field its reader cannot do without: StateError naming it when the stage did not record it."""
        value = getattr(self, field, None)
        if value is None:
            from ftctl.errors import StateError

            stage = next(name for name, model in OUTPUTS.items() if isinstance(self, model))
            raise StateError(
                f"{stage} recorded no {field}", hint=f"run `ftctl {stage} --force` to record it again"
            )
        return value


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
    # Azure ML: the registry asset id, where the allow-lists were read (system_metadata or tags), and
    # the sizes the registry recommends for inference.
    id: str | None = None
    allow_list_source: str | None = None
    inference_recommended_skus: list[str] | None = None
    # Azure ML: how the model is fine-tuned ("pipeline" or "job", finetune.route resolved) and why.
    route: str | None = None
    route_source: str | None = None
    maas_deploy_regions: list[str] | None = None  # job route: where its fine-tuned models deploy serverless


class CheckComputeOutputs(_Outputs):
    device: str | None = None
    size: str | None = None
    name: str | None = None
    precision: str | None = None
    gpus_per_node: Count | None = None
    cpu_cores: Count | None = None
    gpus: list[dict[str, Any]] | None = None  # local: the GPUs torch sees (index, name, memory_gib, bf16)
    ram_gib: float | None = None  # local: this machine's memory
    created: bool | None = None  # Azure ML: ftctl created the cluster (teardown --compute may delete it)
    serverless: bool | None = None  # Azure ML, job route: the fine-tuning job runs on serverless compute


class SplitFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

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
    eval_loss: float | None = None  # the selected model's held-out loss (finetune.select)
    select: str | None = None  # local: finetune.select, last or best
    selected_step: Count | None = None  # local: the step whose weights the job output
    final_eval_loss: float | None = None  # local: the held-out loss at the last step
    params: dict[str, Any] | None = None
    stop_check: dict[str, Any] | None = None  # whether the fine-tuned model ends its turn
    template_check: dict[str, Any] | None = None  # local: the trainer's check of the chat template
    test_file: str | None = None  # Azure ML: the test split the job was given
    pace: dict[str, Any] | None = None  # Azure ML: the fine-tuning step's measured time per step
    route: str | None = None  # Azure ML: "pipeline" or "job"
    output_model_name: str | None = None  # Azure ML, job route: the model the service registers
    output_model_version: str | None = None


class RegisterOutputs(_Outputs):
    id: str | None = None  # Azure ML: the registered model's asset id
    model_name: str | None = None
    version: str | None = None
    model_uri: str | None = None
    tags: dict[str, str] = {}
    select: str | None = None  # local: finetune.select of the job registered
    selected_step: Count | None = None  # local: the job's step whose weights were registered
    selected_eval_loss: float | None = None  # local: their held-out loss (what the gate compared)


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
    model_uri: str | None = None
    model_version: str | None = None
    endpoint_kind: str | None = None  # Azure ML: "managed" (online endpoint) or "serverless"


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


pydantic_plugins.resume()


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


def check_outputs(stage: str, outputs: Any) -> str | None:
    """Why `outputs`, as a stage returned them, cannot be recorded (None when they can)."""
    model = OUTPUTS.get(stage)
    if model is None:
        return None
    try:
        model.model_validate(strict_json(outputs))
    except ValidationError as exc:
        first = exc.errors()[0]
        return f"outputs.{_where(first)}: {first['msg']}"
    return None


class StateView:
    """The recorded outputs of every stage, typed and read-only (a stage never changes another's)."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    @property
    def state(self) -> dict[str, Any]:
        """The whole state, for the readers of records beyond outputs (prepared files, statuses)."""
        return self._state

    def _outputs(self, stage: str) -> dict[str, Any]:
        record = (self._state.get("stages") or {}).get(stage) or {}
        return dict(record.get("outputs") or {})

    def recorded(self, stage: str) -> bool:
        """Whether `stage` has recorded any output."""
        return bool(self._outputs(stage))

    @property
    def auth(self) -> AuthOutputs:
        return AuthOutputs.model_validate(self._outputs("auth"))

    @property
    def pick_model(self) -> PickModelOutputs:
        return PickModelOutputs.model_validate(self._outputs("pick-model"))

    @property
    def check_compute(self) -> CheckComputeOutputs:
        return CheckComputeOutputs.model_validate(self._outputs("check-compute"))

    @property
    def prepare_data(self) -> PrepareDataOutputs:
        return PrepareDataOutputs.model_validate(self._outputs("prepare-data"))

    @property
    def submit(self) -> SubmitOutputs:
        return SubmitOutputs.model_validate(self._outputs("submit"))

    @property
    def register(self) -> RegisterOutputs:
        return RegisterOutputs.model_validate(self._outputs("register"))

    @property
    def deploy(self) -> DeployOutputs:
        return DeployOutputs.model_validate(self._outputs("deploy"))

    @property
    def score(self) -> ScoreOutputs:
        return ScoreOutputs.model_validate(self._outputs("score"))

    @property
    def teardown(self) -> TeardownOutputs:
        return TeardownOutputs.model_validate(self._outputs("teardown"))


def strict_json(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None: the state file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    return value
