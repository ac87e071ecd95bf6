"""Configuration: pydantic models of configs/*.yaml, environment variables and --set overrides.

The model defaults ARE the local quickstart (configs/local-quickstart.yaml spells them out; a test keeps
the two equal). Precedence, lowest first: defaults, the workspace's own settings (<workspace>/config.yaml:
what stage options such as `prepare-data --dataset` and `ftctl config set` recorded), the config file
(--config), FTCTL_<SECTION>__<KEY> environment variables, then repeated `--set section.key=value` options.
LoadedConfig.origins says where each value came from (`ftctl config show`).

Every value is checked before anything runs: floats are finite, every integer has a deliberate upper
bound (stated in its Field description), numbers are not true/false and true/false is not a fraction.
YAML is read with bounds too (file size, values after alias expansion, nesting depth), so a hostile or
mistaken file (a "billion laughs" of nested aliases, a dataset passed as --config) is refused at once.
Every error names the key path, and the file and line when there is one (ConfigError, exit 2).
"""

from __future__ import annotations

import difflib
import os
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ftctl import pydantic_plugins
from ftctl.backends import DEFAULT as DEFAULT_BACKEND
from ftctl.backends import NAMES as BACKENDS
from ftctl.constants import SAMPLE_DATASET
from ftctl.errors import ConfigError

TINY_MODEL = "ftctl/tiny-phi3-chat"
# The notebook refuses these SKUs when the model carries no finetune allow-list.
NOTEBOOK_DENY_LIST = ["standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r"]

# --- bounds of the YAML that is read (the rest: ftctl.config_yaml) -----------------------------------

YAML_MAX_BYTES = 1 << 20  # larger: not a config (a dataset given as --config?); read no further

# --- bounds of the values (see each Field's description) -------------------------------------------
MAX_WAIT_S = 7 * 24 * 3600  # any timeout, delay or interval in seconds: longer is a unit mistake
MAX_WAIT_MS = 3600 * 1000  # a request timeout in milliseconds: an hour
MAX_NODES = 1000  # Azure ML cluster nodes or deployment instances
MAX_GPUS_PER_NODE = 64  # no machine has more
MAX_STEPS = 10_000_000  # optimizer steps (and step counts derived from them)
MAX_EPOCHS = 1000
MAX_BATCH = 4096  # sequences per device per step
MAX_ACCUMULATION = 1024
MAX_ROWS = 1_000_000_000  # dataset rows
MAX_TOKENS = 1 << 20  # sequence or generation length in tokens: beyond any model's context window
MAX_LORA_RANK = 1024
MAX_LORA_ALPHA = 4096
MAX_CHECKPOINTS = 1000
MAX_MINUTES = 10_000.0  # minutes between time-based checkpoints (about a week)
MAX_SEED = 2**32 - 1  # numpy's seed range; transformers.set_seed seeds numpy too
MAX_PORT = 65535


def _kind(annotation: Any) -> str | None:
    """ "int", "float" or "bool" for a setting of that type (optional or not), else None."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = {arg for arg in get_args(annotation) if arg is not type(None)}
    else:
        args = {annotation}
    if len(args) != 1:
        return None
    (only,) = args
    return {int: "int", float: "float", bool: "bool"}.get(only)


pydantic_plugins.suspend()  # until resume() below: ftctl.pydantic_plugins


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_value(cls, value: Any, info: ValidationInfo) -> Any:
        """Numbers are not true/false, true/false is not 1.0, and no number is too large to read."""
        if info.field_name is None or value is None:
            return value
        kind = _kind(cls.model_fields[info.field_name].annotation)
        if kind in ("int", "float") and isinstance(value, bool):
            raise PydanticCustomError("number_type", "Input should be a number, not true or false")
        if kind == "bool" and isinstance(value, float):
            raise PydanticCustomError("bool_parsing", "Input should be true or false")
        if kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)  # 1.0e30 is then refused by the field's bound, as 10**30 is
        # Digits arrive as text when YAML could not make an int of them (over 4300 digits).
        if kind == "int" and isinstance(value, str) and len(value) > 100 and value.lstrip("+-").isdigit():
            raise PydanticCustomError("int_too_large", "Input should be a number of at most 100 digits")
        if kind == "float" and isinstance(value, int):
            try:
                float(value)
            except OverflowError:
                raise PydanticCustomError("finite_number", "Input should be a finite number") from None
        return value


def _version_text(value: Any) -> Any:
    """`--set model.revision=14` reads 14 as a number; a version is text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# A version or revision: text, even when written as a number.
VersionText = Annotated[str | None, BeforeValidator(_version_text)]


class ModelSection(Section):
    name: str = Field(TINY_MODEL, description="Hugging Face id, local folder, or Azure registry model name")
    revision: VersionText = Field(
        None, description="hub revision (local) or pinned registry version (azureml)"
    )
    label: str = "latest"
    cache_dir: str | None = Field(
        None,
        description="local: where built-in models are converted once (relative paths inside the workspace); "
        "null = <workspace>/models",
    )


class ComputeSection(Section):
    name: str = Field("local", description="cluster name on Azure ML; a label on the local backend")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: int | None = Field(
        None,
        ge=0,
        le=MAX_GPUS_PER_NODE,
        description=f"GPUs to use per node, 0..{MAX_GPUS_PER_NODE}; null = all that are visible",
    )
    allow_list: list[str] | None = None
    deny_list: list[str] = Field(default_factory=lambda: list(NOTEBOOK_DENY_LIST))
    # Azure ML cluster creation (used by --backend azureml).
    size: str = "Standard_NC24ads_A100_v4"
    min_instances: int = Field(0, ge=0, le=MAX_NODES, description=f"cluster nodes kept up, 0..{MAX_NODES}")
    max_instances: int = Field(1, ge=1, le=MAX_NODES, description=f"cluster nodes at most, 1..{MAX_NODES}")
    idle_time_before_scale_down: int = Field(
        120, ge=0, le=MAX_WAIT_S, description=f"seconds before idle nodes go, 0..{MAX_WAIT_S} (a week)"
    )


def _data_columns(value: dict[str, str] | None) -> dict[str, str] | None:
    """data.columns: the keys are columns of a format ftctl reads (ftctl.data.formats)."""
    from ftctl.data.formats import COLUMN_NAMES

    for key, column in (value or {}).items():
        if key not in COLUMN_NAMES:
            raise ValueError(f"unknown column {key!r}: the columns ftctl reads are {', '.join(COLUMN_NAMES)}")
        if not column.strip():
            raise ValueError(f"data.columns.{key} is empty: name the column of your data that holds {key}")
    return value or None


class DataSection(Section):
    dataset: str = Field(
        SAMPLE_DATASET,
        description="a data file (.jsonl, .json, .csv, .parquet), a folder of <split>.jsonl or a hub-layout "
        "folder, a hub id, or the shipped sample",
    )
    subset: str | None = None
    revision: str | None = None
    format: Literal["auto", "openai", "sharegpt", "alpaca", "prompt-completion"] = Field(
        "auto", description="the records' format; auto: from the first record's columns"
    )
    columns: Annotated[dict[str, str] | None, AfterValidator(_data_columns)] = Field(
        None, description="format column -> your column, e.g. {prompt: question, completion: answer}"
    )
    split_pc: float = Field(100.0, gt=0, le=100, description="percent of each split to keep, (0, 100]")
    test_pc: float = Field(
        10.0,
        ge=0,
        lt=100,
        description="one file (or one-split dataset): percent held out as test_split, [0, 100)",
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description=f"chooses the held-out records, 0..{MAX_SEED}")
    dedupe: bool = Field(
        False, description="drop exact duplicates and test records also in train (else reported)"
    )
    download_dir: str = Field("data", description="relative paths are inside the workspace")
    train_split: str = "train_sft"
    test_split: str = "test_sft"
    score_split: str = Field(
        "test_gen", description="score's sample; test_split when the data has no such split"
    )
    min_train_rows: int = Field(
        10, ge=1, le=MAX_ROWS, description=f"fewest valid training rows to go on with, 1..{MAX_ROWS}"
    )


LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


def _number_is_text(value: Any) -> Any:
    """`--set finetune.precision=32` and YAML's `precision: 16` read as numbers: they mean the words."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class FinetuneSection(Section):
    num_train_epochs: int = Field(
        4, ge=1, le=MAX_EPOCHS, description=f"passes over the training data, 1..{MAX_EPOCHS}"
    )
    max_steps: int = Field(
        -1,
        ge=-1,
        le=MAX_STEPS,
        description=f"optimizer steps, -1..{MAX_STEPS}; -1 = as many as num_train_epochs make",
    )
    per_device_train_batch_size: int = Field(
        8, ge=1, le=MAX_BATCH, description=f"training sequences per device per step, 1..{MAX_BATCH}"
    )
    per_device_eval_batch_size: int = Field(
        8, ge=1, le=MAX_BATCH, description=f"evaluation sequences per device per step, 1..{MAX_BATCH}"
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=MAX_ACCUMULATION,
        description=f"batches per optimizer step, 1..{MAX_ACCUMULATION}",
    )
    learning_rate: float = Field(
        2e-3, gt=0, le=1, description="peak learning rate, (0, 1]: above 1 AdamW only diverges"
    )
    lr_scheduler_type: LrScheduler = "cosine"
    warmup_steps: int = Field(
        0, ge=0, le=MAX_STEPS, description=f"learning-rate warmup steps, 0..{MAX_STEPS}"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay, >= 0 (finite)")
    apply_lora: bool = True
    lora_r: int = Field(8, ge=1, le=MAX_LORA_RANK, description=f"LoRA rank, 1..{MAX_LORA_RANK}")
    lora_alpha: int = Field(16, ge=1, le=MAX_LORA_ALPHA, description=f"LoRA scaling, 1..{MAX_LORA_ALPHA}")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout probability, [0, 1)")
    lora_target_modules: list[str] | None = None
    merge_lora_weights: bool = True
    max_seq_length: int = Field(
        256, ge=16, le=MAX_TOKENS, description=f"tokens per training row, 16..{MAX_TOKENS}"
    )
    packing: bool = Field(True, description="pack short conversations into rows of max_seq_length (local)")
    precision: Annotated[Literal["auto", "32", "16", "bf16"], BeforeValidator(_number_is_text)] = Field(
        "auto", description="auto: bf16 on GPUs that support it, else 16 on GPU, 32 on CPU"
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description=f"training seed, 0..{MAX_SEED} (numpy's range)")
    apply_deepspeed: bool = False
    deepspeed_stage: Literal[2, 3] = 2
    num_nodes: int = Field(1, ge=1, le=MAX_NODES, description=f"training nodes (Azure ML), 1..{MAX_NODES}")
    save_total_limit: int = Field(
        -1,
        ge=-1,
        le=MAX_CHECKPOINTS,
        description=f"checkpoints kept, -1..{MAX_CHECKPOINTS}; -1 = all (local: the best one is kept too "
        "under select: best)",
    )
    save_steps: int | None = Field(
        None,
        ge=0,
        le=MAX_STEPS,
        description=f"local: optimizer steps between checkpoints, 0..{MAX_STEPS}; null = at every "
        "evaluation (about a quarter of the run); 0 = no checkpoints (and no resume)",
    )
    save_minutes: float | None = Field(
        None,
        gt=0,
        le=MAX_MINUTES,
        description=f"local: also checkpoint when this many minutes passed since the last one, "
        f"(0, {MAX_MINUTES}]; null = by steps only",
    )
    select: Literal["last", "best"] = Field(
        "last",
        description="local: the model the job outputs: last (the final weights) or best (the checkpoint "
        "or final weights with the lowest held-out loss)",
    )
    logging_steps: int = Field(
        5, ge=1, le=MAX_STEPS, description=f"steps between progress reports, 1..{MAX_STEPS}"
    )
    max_eval_samples: int | None = Field(
        64, ge=1, le=MAX_ROWS, description=f"evaluation rows, 1..{MAX_ROWS}; null = all"
    )
    use_model_defaults: bool = Field(
        True, description="apply the model's model_specific_defaults over this section, as the notebook does"
    )
    route: Literal["auto", "pipeline", "job"] = Field(
        "auto",
        description="Azure ML: pipeline (the chat_completion_pipeline component), job (the fine-tuning job "
        "API, deployed serverless) or auto (what the model's registry metadata supports)",
    )


# An endpoint's name is this prefix and a unix time (10 digits); it names a folder of the workspace and
# an Azure ML endpoint, whose names are 3-32 letters, digits and hyphens starting with a letter.
ENDPOINT_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,21}$")


def _endpoint_prefix(value: str) -> str:
    if not ENDPOINT_PREFIX_RE.match(value):
        raise PydanticCustomError(
            "endpoint_prefix",
            "must start with a letter and hold at most 22 letters, digits and hyphens (it becomes a "
            "folder and an endpoint name), got {value!r}",
            {"value": value},
        )
    return value


def _known_backend(value: str) -> str:
    if value not in BACKENDS:
        raise PydanticCustomError("backend", "must be {names}", {"names": " or ".join(BACKENDS)})
    return value


def _off_is_text(value: Any) -> Any:
    """YAML reads a bare `off` as false: `register.gate: off` means the word."""
    return "off" if value is False else value


class RegisterSection(Section):
    model_name: str | None = Field(
        None, description="default: <model>-ultrachat-200k (a hub id's / as -, a model folder by its name)"
    )
    gate: Annotated[Literal["improve", "off"], BeforeValidator(_off_is_text)] = Field(
        "improve",
        description="improve: register only a model whose held-out loss beats the base model's and the "
        "previous version's (`register --force` overrides); off: no check",
    )


class PlanSection(Section):
    """`ftctl plan` and the check `ftctl submit` makes first (no stage reads these)."""

    sample_rows: int | None = Field(
        2000,
        ge=1,
        le=MAX_ROWS,
        description=f"conversations per split tokenized for the statistics, 1..{MAX_ROWS}; null = all",
    )
    calibration_steps: int = Field(
        5, ge=2, le=100, description="optimizer steps timed by the calibration, 2..100 (the first warms up)"
    )
    tokenizer: str | None = Field(
        None,
        description="azureml: the model's tokenizer, for exact token counts: a local folder with its "
        "tokenizer files, or a hub id (org/name) found in this machine's Hugging Face cache; null = the "
        "model's hub id when ftctl knows it and it is cached, else token counts are estimated",
    )
    chars_per_token: float = Field(
        4.0,
        ge=1,
        le=10,
        description="azureml without a tokenizer: characters per token for the estimate, 1..10",
    )


class DeploySection(Section):
    endpoint_name_prefix: Annotated[str, AfterValidator(_endpoint_prefix)] = "ultrachat-completion-"
    deployment_name: str = "demo"
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=MAX_PORT, description=f"0..{MAX_PORT}; 0 picks a free port")
    request_timeout_ms: int = Field(
        90000,
        ge=1,
        le=MAX_WAIT_MS,
        description=f"scoring timeout in milliseconds, 1..{MAX_WAIT_MS} (an hour; Azure ML may allow less)",
    )
    ready_timeout_s: float = Field(
        180.0, gt=0, le=MAX_WAIT_S, description=f"seconds to wait for the server, (0, {MAX_WAIT_S}]"
    )
    instance_type: str | None = Field(
        None,
        description="Azure ML VM size of the deployment; null: the model's recommended inference size "
        "within its allow-list",
    )
    instance_count: int = Field(
        1, ge=1, le=MAX_NODES, description=f"deployment instances (Azure ML), 1..{MAX_NODES}"
    )
    liveness_initial_delay_s: int = Field(
        600,
        ge=0,
        le=MAX_WAIT_S,
        description=f"seconds before Azure ML probes the deployment, 0..{MAX_WAIT_S} (a week)",
    )
    ttl: str | None = Field(
        None,
        description="time to live of the endpoint, e.g. 30m, 4h, 2d (at most 365d); past it every command "
        "warns, `ftctl teardown --expired` tears it down and the local server stops itself",
    )

    @field_validator("ttl")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        from ftctl.ttl import parse_duration

        if value is not None:
            parse_duration(value)  # ValueError -> a config error naming deploy.ttl
        return value


class ScoreSection(Section):
    temperature: float = Field(0.6, ge=0, description="sampling temperature, >= 0 (finite); 0 = greedy")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling, (0, 1]")
    do_sample: bool = True
    max_new_tokens: int = Field(
        200, ge=1, le=MAX_TOKENS, description=f"longest reply in tokens, 1..{MAX_TOKENS}"
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description=f"picks the scored conversation, 0..{MAX_SEED}")
    timeout_s: float = Field(
        120.0, gt=0, le=MAX_WAIT_S, description=f"seconds to wait for a reply, (0, {MAX_WAIT_S}]"
    )


class AzureMLSection(Section):
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace_name: str | None = None
    workspace_config: str | None = Field(None, description="path to a config.json")
    registry_name: str = "azureml"
    experiment_name: str | None = Field(None, description="default: chat_completion_<model>")
    interactive_login: bool = Field(
        True, description="fall back to a browser sign-in when no credential is found (terminal only)"
    )
    # The fine-tuning pipeline component, from the registry: a pinned version, or the label.
    component_name: str = "chat_completion_pipeline"
    component_version: VersionText = None
    component_label: str = "latest"
    force_rerun: bool = True
    continue_on_step_failure: bool = False


class Config(Section):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    backend: Annotated[str, AfterValidator(_known_backend)] = DEFAULT_BACKEND
    lock_timeout_s: float = Field(
        10.0, ge=0, le=MAX_WAIT_S, description=f"seconds to wait for the workspace lock, 0..{MAX_WAIT_S}"
    )
    # How often a waiting stage asks Azure ML for news (jobs, endpoints, clusters). Not part of any
    # fingerprint: changing it never makes a stage stale.
    poll_interval_s: float = Field(
        30.0, ge=0, le=MAX_WAIT_S, description=f"seconds between Azure ML polls, 0..{MAX_WAIT_S}"
    )
    model: ModelSection = Field(default_factory=ModelSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)
    data: DataSection = Field(default_factory=DataSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    # "register" would shadow pydantic's BaseModel.register; the YAML key stays `register`.
    register_: RegisterSection = Field(default_factory=RegisterSection, alias="register")
    deploy: DeploySection = Field(default_factory=DeploySection)
    plan: PlanSection = Field(default_factory=PlanSection)
    score: ScoreSection = Field(default_factory=ScoreSection)
    azureml: AzureMLSection = Field(default_factory=AzureMLSection)


pydantic_plugins.resume()

WORKSPACE_CONFIG = "config.yaml"  # the workspace's own settings, under the workspace folder


@dataclass
class LoadedConfig:
    """The validated config plus where it came from."""

    values: Config
    source: Path | None = None
    explicit: set[str] = field(default_factory=set)  # key paths given by env vars or --set
    # key path (a setting or a whole section) -> where it was set: "workspace (<file>:<line>)",
    # "<file>:<line>", "env FTCTL_...", "--set", "--backend"; a key in none of them is a default.
    origins: dict[str, str] = field(default_factory=dict)

    def origin(self, key: str) -> str:
        """Where the value of setting `key` came from ("default" when nothing set it)."""
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            found = self.origins.get(".".join(parts[:n]))
            if found is not None:
                return found
        return "default"

    def flat(self) -> dict[str, Any]:
        return flatten(self.values.model_dump(mode="json", by_alias=True))

    def select(self, prefixes: Iterable[str]) -> dict[str, Any]:
        """The flattened values whose key path equals or starts with one of `prefixes`."""
        prefixes = tuple(prefixes)
        return {
            key: value
            for key, value in self.flat().items()
            if any(key == p or key.startswith(p + ".") for p in prefixes)
        }


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _not_utf8(text: str) -> str | None:
    """Why `text` (from argv or the environment, where Python keeps each byte that is not UTF-8 as a
    lone surrogate) is not valid UTF-8, e.g. "byte 0xff"; None when it is."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        if "\udc80" <= bad <= "\udcff":  # the byte itself, as os.fsdecode keeps it
            return f"byte {ord(bad) - 0xDC00:#04x}"
        return f"character {ascii(bad)}"


def _shown(text: str) -> str:
    """`text` printable whatever it holds: each byte that is not UTF-8 as \\xNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return ascii(text)[1:-1]


def parse_override(text: str, origin: str = "--set") -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    bad = _not_utf8(origin)  # an environment variable's name
    if bad is not None:
        raise ConfigError(f"invalid config: {_shown(origin)}: the name is not valid UTF-8 ({bad})")
    bad = _not_utf8(key)
    if bad is not None:
        raise ConfigError(
            f"invalid config: {_shown(key)} (from {origin}): the key is not valid UTF-8 ({bad})"
        )
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{origin} {text!r}: expected key.path=value, e.g. finetune.learning_rate=1e-4")
    bad = _not_utf8(raw)
    if bad is not None:
        raise ConfigError(f"invalid config: {key} (from {origin}): not valid UTF-8 ({bad})")
    if not raw.strip():
        return key, None
    from ftctl import config_yaml

    try:
        value, _ = config_yaml.load(raw)
    except config_yaml.Unreadable:
        value = raw
    except config_yaml.Refused as exc:
        where = f"{key}.{exc.key}" if exc.key else key  # a key inside the value: {seed: 1, seed: 2}
        raise ConfigError(f"invalid config: {where} (from {origin}): {exc.problem}") from None
    except config_yaml.Malformed:
        value = raw
    return key, value


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """FTCTL_FINETUNE__LEARNING_RATE=1e-4 -> ("finetune.learning_rate", 1e-4)."""
    found = []
    for name, raw in sorted(environ.items()):
        if name.startswith("FTCTL_") and "__" in name:
            key = name[len("FTCTL_") :].lower().replace("__", ".")
            _, value = parse_override(f"{key}={raw}", origin=name)
            found.append((key, value, name))
    return found


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(YAML_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(raw) > YAML_MAX_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {YAML_MAX_BYTES >> 20} MiB: is it the right file?"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    from ftctl import config_yaml

    try:
        data, lines = config_yaml.load(text)
    except config_yaml.Refused as exc:
        where = f"{path}:{exc.line}: {exc.key}" if exc.key else f"{path}:{exc.line}"
        raise ConfigError(f"{where}: {exc.problem}") from None
    except config_yaml.Malformed as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, finetune:, ...)")
    return data, lines


def merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section (a value that is not a mapping replaces what was there)."""
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
    return base


def load_config(
    path: Path | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    backend: str | None = None,
    workspace_file: Path | None = None,
) -> LoadedConfig:
    """Build the config; every error names the key path (and the file and line when it has one).

    `workspace_file` is the workspace's own layer (<workspace>/config.yaml; absent: none), below `path`."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    origins: dict[str, str] = {}  # for error messages: what did not come from `path`
    shown: dict[str, str] = {}  # for `ftctl config show`: every layer's keys
    if workspace_file is not None and workspace_file.is_file():
        layer, layer_lines = _read_file(workspace_file)
        merge(data, layer)
        for key in flatten(layer):
            origins[key] = f"{workspace_file}:{layer_lines.get(key, 1)}"
            shown[key] = f"workspace ({origins[key]})"
    if path is not None:
        layer, lines = _read_file(path)
        merge(data, layer)
        for key in flatten(layer):
            origins.pop(key, None)
            shown[key] = f"{path}:{lines.get(key, 1)}"
    explicit: set[str] = set()
    for key, value, name in env_overrides(environ):
        _set_path(data, key, value)
        origins[key], shown[key] = name, f"env {name}"
        explicit.add(key)
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, key, value)
        origins[key] = shown[key] = "--set"
        explicit.add(key)
    if backend is not None:
        data["backend"] = backend
        origins["backend"] = shown["backend"] = "--backend"
    try:
        values = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, lines, origins)) from None
    return LoadedConfig(values=values, source=path, explicit=explicit, origins=shown)


def check_backend_settings(loaded: LoadedConfig) -> None:
    """--backend azureml on nothing but the local defaults would fetch the built-in tiny model from the
    Azure registry onto a cluster named `local`: refused (exit 2) with what to set."""
    cfg = loaded.values
    if cfg.backend != "azureml":
        return
    local = []
    for key, value, local_value in (
        ("model.name", cfg.model.name, TINY_MODEL),
        ("compute.name", cfg.compute.name, "local"),
    ):
        if value == local_value:
            local.append(f"{key} is {value!r} ({loaded.origin(key)})")
    if local:
        raise ConfigError(
            "--backend azureml needs an Azure ML model and cluster, and "
            + " and ".join(local)
            + ": the local quickstart's values",
            hint="start from the Azure defaults: `ftctl init --backend azureml` writes ftctl.yaml (Phi-4 "
            "on an A100 cluster) to edit and pass with --config; or set model.name and compute.name",
        )


def validate_layer(data: Mapping[str, Any], origin: str) -> Config:
    """`data` (a partial config, as a layer holds it) checked on its own; a ConfigError names each key
    `(from <origin>)`, with did-you-mean for an unknown one."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, None, {}, dict.fromkeys(flatten(data), origin))) from None


# --- error messages --------------------------------------------------------------------------------


def _describe(exc: ValidationError, path: Path | None, lines: dict[str, int], origins: dict[str, str]) -> str:
    from ftctl.config_yaml import short  # an error's path: PyYAML's import is no cost here

    messages = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        given, origin = _origin(key, origins)
        if err["type"] == "extra_forbidden":
            problem = "unknown key"
            meant = suggest_keys(given if given.startswith(key + ".") else key)
            if meant:
                problem += f" (did you mean {_meant(meant, origin)}?)"
        else:
            problem = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict | list):
                problem += f" (got {short(err['input'])})"
        if origin is not None:
            where = f"{key} (from {origin})"
        elif path is not None:
            line = lines.get(key)
            where = f"{path}:{line}: {key}" if line else f"{path}: {key}"
        else:
            where = key
        messages.append(f"{where}: {problem}")
    if len(messages) == 1:
        return f"invalid config: {messages[0]}"
    return "invalid config:\n  " + "\n  ".join(messages)


def _origin(key: str, origins: dict[str, str]) -> tuple[str, str | None]:
    """(the key path as given, where it came from) for an error at `key`: the override that set it,
    one that set a whole section containing it, or one under it (`--set modle.name=x` fails at
    `modle`); (key, None) when it came from the file."""
    if key in origins:
        return key, origins[key]
    for given, origin in origins.items():
        if key.startswith(given + ".") or given.startswith(key + "."):
            return given, origin
    return key, None


def _meant(keys: list[str], origin: str | None) -> str:
    if origin is not None and origin.startswith("FTCTL_"):
        # Environment variables set section keys only (FTCTL_<SECTION>__<KEY>).
        keys = [f"{k}, i.e. FTCTL_{k.upper().replace('.', '__')}" if "." in k else k for k in keys]
        return " or ".join(keys)
    return " or ".join([", ".join(keys[:-1]), keys[-1]] if len(keys) > 2 else keys)


def _fields(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """YAML name -> the section model for a section, None for a setting."""
    out: dict[str, type[BaseModel] | None] = {}
    for name, info in model.model_fields.items():
        sub = info.annotation
        out[info.alias or name] = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return out


def _settings(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every setting's key path."""
    out: list[str] = []
    for name, sub in _fields(model).items():
        out.extend(_settings(sub, f"{prefix}{name}.") if sub is not None else [prefix + name])
    return out


def suggest_keys(key: str) -> list[str]:
    """The known key paths an unknown `key` most likely meant (difflib's close matches), or []:
    each part corrected within its section (finetune.learnig_rate -> finetune.learning_rate,
    modle.name -> model.name); failing that, an unknown last part is looked for in every section
    (learning_rate -> finetune.learning_rate; seed -> finetune.seed, score.seed)."""
    parts = key.split(".")
    model: type[BaseModel] | None = Config
    fixed: list[str] = []
    for part in parts:
        if model is None:
            return []  # deeper than a setting goes
        fields = _fields(model)
        close = [part] if part in fields else difflib.get_close_matches(part.lower(), fields, 1, 0.75)
        if not close:
            break
        fixed.append(close[0])
        model = fields[close[0]]
    else:
        guess = ".".join(fixed)
        return [guess] if guess != key else []
    if len(fixed) != len(parts) - 1:
        return []  # an unknown section: what follows it says little
    leaf = parts[-1].lower()
    everywhere = _settings()
    same = [k for k in everywhere if k.rsplit(".", 1)[-1] == leaf]
    if same:
        return same[:3]
    leaves = {k.rsplit(".", 1)[-1] for k in everywhere}
    near = difflib.get_close_matches(leaf, leaves, 1, 0.8)
    return [k for k in everywhere if near and k.rsplit(".", 1)[-1] == near[0]][:3]
