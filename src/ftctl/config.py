"""Configuration: pydantic models of configs/*.yaml, environment variables and --set overrides.

The model defaults ARE the local quickstart (configs/local-quickstart.yaml spells them out; a test keeps
the two equal). Precedence, lowest first: defaults, the config file, FTCTL_<SECTION>__<KEY> environment
variables, then repeated `--set section.key=value` options.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ftctl.constants import SAMPLE_DATASET
from ftctl.errors import ConfigError

TINY_MODEL = "ftctl/tiny-phi3-chat"
# The notebook refuses these SKUs when the model carries no finetune allow-list.
NOTEBOOK_DENY_LIST = ["standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class ComputeSection(Section):
    name: str = Field("local", description="cluster name on Azure ML; a label on the local backend")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_gpus: int | None = Field(None, ge=0, description="GPUs to use; null = all that are visible")
    allow_list: list[str] | None = None
    deny_list: list[str] = Field(default_factory=lambda: list(NOTEBOOK_DENY_LIST))
    # Azure ML cluster creation (used by --backend azureml).
    size: str = "Standard_NC24ads_A100_v4"
    min_instances: int = Field(0, ge=0)
    max_instances: int = Field(1, ge=1)
    idle_time_before_scale_down: int = Field(120, ge=0)


class DataSection(Section):
    dataset: str = SAMPLE_DATASET
    subset: str | None = None
    revision: str | None = None
    split_pc: float = Field(100.0, gt=0, le=100)
    download_dir: str = Field("data", description="relative paths are inside the workspace")
    train_split: str = "train_sft"
    test_split: str = "test_sft"
    score_split: str = "test_gen"
    min_train_rows: int = Field(10, ge=1)


LrScheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
]


class FinetuneSection(Section):
    num_train_epochs: int = Field(4, ge=1)
    max_steps: int = Field(-1, ge=-1)
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    lr_scheduler_type: LrScheduler = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    apply_lora: bool = True
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] | None = None
    merge_lora_weights: bool = True
    max_seq_length: int = Field(256, ge=16)
    packing: bool = Field(True, description="pack short conversations into rows of max_seq_length (local)")
    precision: Literal["auto", "32", "16", "bf16"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, else 16 on GPU, 32 on CPU"
    )
    seed: int = 42
    apply_deepspeed: bool = False
    deepspeed_stage: Literal[2, 3] = 2
    num_nodes: int = Field(1, ge=1)
    save_total_limit: int = -1
    logging_steps: int = Field(5, ge=1)
    max_eval_samples: int | None = Field(64, ge=1)
    use_model_defaults: bool = Field(
        True, description="apply the model's model_specific_defaults over this section, as the notebook does"
    )


class RegisterSection(Section):
    model_name: str | None = Field(None, description="default: <model>-ultrachat-200k with / replaced by -")


class DeploySection(Section):
    endpoint_name_prefix: str = "ultrachat-completion-"
    deployment_name: str = "demo"
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    request_timeout_ms: int = Field(90000, ge=1)
    ready_timeout_s: float = Field(180.0, gt=0)
    instance_type: str = "Standard_NC6s_v3"
    instance_count: int = Field(1, ge=1)
    liveness_initial_delay_s: int = Field(600, ge=0)


class ScoreSection(Section):
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    do_sample: bool = True
    max_new_tokens: int = Field(200, ge=1)
    seed: int = 42
    timeout_s: float = Field(120.0, gt=0)


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

    backend: Literal["local", "azureml"] = "local"
    lock_timeout_s: float = Field(10.0, ge=0)
    # How often a waiting stage asks Azure ML for news (jobs, endpoints, clusters). Not part of any
    # fingerprint: changing it never makes a stage stale.
    poll_interval_s: float = Field(30.0, ge=0)
    model: ModelSection = Field(default_factory=ModelSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)
    data: DataSection = Field(default_factory=DataSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    # "register" would shadow pydantic's BaseModel.register; the YAML key stays `register`.
    register_: RegisterSection = Field(default_factory=RegisterSection, alias="register")
    deploy: DeploySection = Field(default_factory=DeploySection)
    score: ScoreSection = Field(default_factory=ScoreSection)
    azureml: AzureMLSection = Field(default_factory=AzureMLSection)


@dataclass
class LoadedConfig:
    """The validated config plus where it came from."""

    values: Config
    source: Path | None = None
    explicit: set[str] = field(default_factory=set)  # key paths given by env vars or --set

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


def parse_override(text: str, origin: str = "--set") -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{origin} {text!r}: expected key.path=value, e.g. finetune.learning_rate=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
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


def _yaml_lines(text: str) -> dict[str, int]:
    """Map each key path of a YAML mapping document to its 1-based line number."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = f"{prefix}{key_node.value}"
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path + ".")

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, "")
    return lines


def text_line(path: Path, offset: int) -> int:
    """The 1-based line of byte `offset` in the file."""
    try:
        with open(path, "rb") as handle:
            return handle.read(offset).count(b"\n") + 1
    except OSError:
        return 1


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = text_line(path, exc.start)
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, finetune:, ...)")
    return data, _yaml_lines(text)


def load_config(
    path: Path | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    backend: str | None = None,
) -> LoadedConfig:
    """Build the config; every error names the key path (and the file and line when it has one)."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    if path is not None:
        data, lines = _read_file(path)
    origins: dict[str, str] = {}
    explicit: set[str] = set()
    for key, value, name in env_overrides(environ):
        _set_path(data, key, value)
        origins[key] = name
        explicit.add(key)
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, key, value)
        origins[key] = "--set"
        explicit.add(key)
    if backend is not None:
        data["backend"] = backend
        origins["backend"] = "--backend"
    try:
        values = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, lines, origins)) from None
    return LoadedConfig(values=values, source=path, explicit=explicit)


def _describe(exc: ValidationError, path: Path | None, lines: dict[str, int], origins: dict[str, str]) -> str:
    messages = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            problem = "unknown key"
        else:
            problem = err["msg"].removeprefix("Value error, ")
            if "input" in err and not isinstance(err["input"], dict | list):
                problem += f" (got {err['input']!r})"
        if key in origins:
            where = f"{key} (from {origins[key]})"
        elif path is not None:
            line = lines.get(key)
            where = f"{path}:{line}: {key}" if line else f"{path}: {key}"
        else:
            where = key
        messages.append(f"{where}: {problem}")
    return "invalid config:\n  " + "\n  ".join(messages)
