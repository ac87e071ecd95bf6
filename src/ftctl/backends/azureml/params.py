"""The chat_completion_pipeline inputs ftctl sends: the notebook's finetune parameters, restricted to the
inputs the component declares, in the types it declares (no azure imports).

The notebook: training + optimization parameters, then the model's `model_specific_defaults` over them,
all passed as keyword inputs to the component. ftctl does the same with:

- the `finetune` keys the configuration sets (config file, FTCTL_ variables, --set); keys left at ftctl's
  built-in defaults (the local quickstart's) are not sent, so the component's own defaults apply;
- then the model's defaults (unless finetune.use_model_defaults is false), except keys given with --set or
  an FTCTL_ variable;
- then only the inputs the component declares: azure-ai-ml rejects unknown keyword inputs, so the others
  are dropped and reported; values take the declared type, and the yes/no inputs are the strings
  "true"/"false" (string enums), never booleans.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftctl.errors import UsageError

# ftctl's finetune key -> the component's input name, where they differ.
RENAMED = {"num_nodes": "num_nodes_finetune"}
# finetune keys that only the local backend uses (reported when set), and ftctl's own switches.
LOCAL_ONLY = {"lora_target_modules", "max_eval_samples"}
CONTROL = {"use_model_defaults"}
LITERAL_TYPES = {"string", "integer", "number", "boolean"}


@dataclass
class Declared:
    """One component input: its type and, for string enums, the allowed values."""

    type: str
    enum: list[str] | None = None
    default: Any = None


@dataclass
class FinetuneInputs:
    inputs: dict[str, Any]  # name -> value in the declared type
    notes: list[str] = field(default_factory=list)  # what the model defaults changed or what was kept
    dropped: list[str] = field(default_factory=list)  # "key=value (why)"


def _as_string(name: str, value: Any, declared: Declared) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and value.is_integer() and declared.enum:
        text = str(int(value))
    else:
        text = str(value)
    if not declared.enum:
        return text
    match = next((e for e in declared.enum if e.lower() == text.lower()), None)
    if match is None:
        raise UsageError(
            f"finetune input {name}={value!r} is not one of the values the component accepts: "
            f"{', '.join(declared.enum)}",
            hint=f"set finetune.{name} (or --set finetune.{name}=...) to one of them",
        )
    return match


def _as_integer(name: str, value: Any, declared: Declared) -> int:
    wrong = UsageError(f"finetune input {name} must be an integer (got {value!r})")
    if isinstance(value, bool):
        raise wrong
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise wrong from None
    if not number.is_integer():
        raise wrong
    return int(number)


def _as_number(name: str, value: Any, declared: Declared) -> float:
    wrong = UsageError(f"finetune input {name} must be a number (got {value!r})")
    if isinstance(value, bool):
        raise wrong
    try:
        return float(value)
    except (TypeError, ValueError):
        raise wrong from None


def _as_boolean(name: str, value: Any, declared: Declared) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return bool(value)


_COERCE = {"string": _as_string, "integer": _as_integer, "number": _as_number, "boolean": _as_boolean}


def coerce(name: str, value: Any, declared: Declared) -> Any:
    """`value` in the type the component declares for `name` (UsageError when it cannot be)."""
    convert = _COERCE.get(declared.type)
    return convert(name, value, declared) if convert else value


@dataclass
class FinetuneSources:
    """Where the finetune values come from.

    values: the finetune section's values; set_keys: the keys the configuration set; explicit: keys
    given by --set / FTCTL_ variables (they beat the model's defaults); model_defaults: the model's
    model_specific_defaults, applied when use_model_defaults."""

    values: dict[str, Any]
    set_keys: set[str]
    explicit: set[str] = field(default_factory=set)
    model_defaults: dict[str, Any] = field(default_factory=dict)
    use_model_defaults: bool = False


def _candidates(sources: FinetuneSources, result: FinetuneInputs) -> dict[str, tuple[Any, str]]:
    """component input name -> (value, origin), from the configuration and the model's defaults."""
    candidates: dict[str, tuple[Any, str]] = {}
    values = sources.values
    for key in sorted(sources.set_keys):
        if key in CONTROL or key not in values or values[key] is None:
            continue
        if key in LOCAL_ONLY:
            result.dropped.append(f"{key}={values[key]!r} (finetune.{key}; used by the local backend only)")
        elif not (key == "precision" and values[key] == "auto"):  # auto: the component's default
            candidates[RENAMED.get(key, key)] = (values[key], f"finetune.{key}")
    if sources.use_model_defaults:
        for key, value in sorted(sources.model_defaults.items()):
            name = RENAMED.get(key, key)
            if key in sources.explicit:
                kept = candidates.get(name, (values.get(key),))[0]
                result.notes.append(f"kept finetune.{key}={kept!r} over the model default {value!r}")
                continue
            candidates[name] = (value, "model default")
            result.notes.append(f"model default {key}={value!r}")
    return candidates


def finetune_inputs(
    sources: FinetuneSources, declared: dict[str, Declared], reserved: set[str]
) -> FinetuneInputs:
    """The component inputs from the finetune section and the model's defaults, restricted to what the
    component declares; reserved: inputs ftctl sets itself (model, data, computes, GPU count)."""
    result = FinetuneInputs(inputs={})
    for name, (value, origin) in _candidates(sources, result).items():
        if name in reserved:
            result.dropped.append(f"{name}={value!r} ({origin}; ftctl sets this input itself)")
        elif name not in declared:
            result.dropped.append(f"{name}={value!r} ({origin}; not an input of the component)")
        elif declared[name].type not in LITERAL_TYPES:
            result.dropped.append(f"{name}={value!r} ({origin}; a {declared[name].type} input, not a value)")
        else:
            result.inputs[name] = coerce(name, value, declared[name])
    return result


def display_params(inputs: dict[str, Any], declared: dict[str, Declared]) -> dict[str, Any]:
    """The values the notebook's display name reads, from what is sent (else the component's defaults),
    shaped for ftctl.stages.submit.display_name."""

    def value(name: str, fallback: Any) -> Any:
        if name in inputs:
            return inputs[name]
        default = declared[name].default if name in declared else None
        return fallback if default is None else default

    def number(name: str, fallback: int) -> int:
        try:
            return int(float(value(name, fallback)))
        except (TypeError, ValueError):
            return fallback

    def yes(name: str) -> bool:
        return str(value(name, "false")).lower() == "true"

    return {
        "per_device_train_batch_size": number("per_device_train_batch_size", 1),
        "gradient_accumulation_steps": number("gradient_accumulation_steps", 1),
        "num_nodes": number("num_nodes_finetune", 1),
        "deepspeed_stage": value("deepspeed_stage", "2"),
        "apply_deepspeed": yes("apply_deepspeed"),
        "apply_lora": yes("apply_lora"),
        "lr_scheduler_type": value("lr_scheduler_type", "linear"),
        # The notebook: `save_total_limit or -1`, `max_seq_length or -1` of the parameters it sends.
        "save_total_limit": inputs.get("save_total_limit") or -1,
        "max_seq_length": inputs.get("max_seq_length") or -1,
    }
