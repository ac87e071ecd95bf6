"""What a registry model says about itself: compute allow-lists, model-specific finetune defaults and
its lifecycle (archived, deprecated, retired). Pure functions over plain data (no azure imports).

Two layouts exist in the `azureml` registry:

- the notebook's: tags `finetune_compute_allow_list` / `inference_compute_allow_list` (a string holding a
  Python list literal) and `model_specific_defaults` (a string holding a dict literal);
- since 2026-06 (azureml-assets): the model's `system_metadata`, e.g.
  ``{"supportedComputes": {"finetune": [...], "inference": [...]}, "modelSpecificDefaults": {...}}``.
  The exact shape is not documented, so the reader is tolerant: key spelling and case do not matter,
  lists may be lists or strings, and supportedComputes may also be a list of
  ``{"scenario"|"type"|"task": ..., "skus"|"computes"|"vmSizes": [...]}`` entries.
"""

from __future__ import annotations

import ast
import json
import re
from datetime import date
from typing import Any

FINETUNE_TAG = "finetune_compute_allow_list"
INFERENCE_TAG = "inference_compute_allow_list"
DEFAULTS_TAG = "model_specific_defaults"


def _norm(key: object) -> str:
    return re.sub(r"[^a-z0-9]", "", str(key).lower())


def parse_list(value: Any) -> list[str] | None:
    """A list of SKU names from a list, a Python/JSON list literal, or a comma-separated string."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [_sku_name(v) for v in value]
        return [i for i in items if i] or None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("["):
            for parse in (ast.literal_eval, json.loads):
                try:
                    return parse_list(parse(text))
                except (ValueError, SyntaxError):
                    continue
            text = text.strip("[]")
        items = [part.strip().strip("'\"") for part in text.split(",")]
        return [i for i in items if i] or None
    return None


def _sku_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, dict):
        for key, item in value.items():
            if _norm(key) in ("name", "sku", "vmsize", "instancetype") and isinstance(item, str):
                return item
    return None


def parse_dict(value: Any) -> dict[str, Any] | None:
    """A dict from a dict or a Python/JSON dict literal."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str) and value.strip().startswith("{"):
        for parse in (ast.literal_eval, json.loads):
            try:
                parsed = parse(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, dict):
                return parsed
    return None


def _find(mapping: Any, *names: str) -> Any:
    if not isinstance(mapping, dict):
        return None
    wanted = {_norm(n) for n in names}
    for key, value in mapping.items():
        if _norm(key) in wanted:
            return value
    return None


def _scenario(key: object) -> str | None:
    text = _norm(key)
    if "finetun" in text or "training" in text or text == "train":
        return "finetune"
    if "inferenc" in text or "deploy" in text or "serving" in text or "online" in text:
        return "inference"
    return None


def supported_computes(system_metadata: Any) -> dict[str, list[str]]:
    """{"finetune": [...], "inference": [...]} from system_metadata.supportedComputes, any shape."""
    found: dict[str, list[str]] = {}
    supported = _find(system_metadata, "supportedComputes", "supported_computes", "computeAllowList")
    if isinstance(supported, str):
        supported = parse_dict(supported) or parse_list(supported)
    if isinstance(supported, dict):
        for key, value in supported.items():
            scenario = _scenario(key)
            skus = parse_list(value) if scenario else None
            if scenario and skus:
                found[scenario] = skus
    elif isinstance(supported, list):
        if all(isinstance(item, str) for item in supported):
            skus = parse_list(supported)  # one list for every scenario
            if skus:
                found = {"finetune": skus, "inference": skus}
        for item in supported:
            if not isinstance(item, dict):
                continue
            scenario = _scenario(_find(item, "scenario", "type", "task", "usage", "kind") or "")
            skus = parse_list(
                _find(item, "skus", "computes", "vmSizes", "instanceTypes", "allowList", "values")
            )
            if scenario and skus:
                found.setdefault(scenario, []).extend(skus)
    return found


def compute_lists(
    tags: dict[str, Any], system_metadata: Any
) -> tuple[list[str] | None, list[str] | None, str]:
    """(finetune allow-list, inference allow-list, where they came from): tags first, as the notebook
    reads them, else system_metadata.supportedComputes."""
    finetune = parse_list(tags.get(FINETUNE_TAG))
    inference = parse_list(tags.get(INFERENCE_TAG))
    if finetune or inference:
        return finetune, inference, "tags"
    supported = supported_computes(system_metadata)
    if supported:
        return supported.get("finetune"), supported.get("inference"), "system_metadata.supportedComputes"
    return None, None, "none"


def model_defaults(tags: dict[str, Any], system_metadata: Any) -> tuple[dict[str, Any], str]:
    """The model's model_specific_defaults and where they came from (tag, else system_metadata)."""
    from_tag = parse_dict(tags.get(DEFAULTS_TAG))
    if from_tag:
        return from_tag, "tags"
    value = _find(system_metadata, "modelSpecificDefaults", "model_specific_defaults", "finetuneDefaults")
    from_meta = parse_dict(value)
    if from_meta:
        return from_meta, "system_metadata"
    return {}, "none"


_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


def lifecycle(tags: dict[str, Any], is_archived: bool, stage: str | None, today: date) -> list[str]:
    """Warnings about an archived, deprecated or retired model ([] when there is nothing to say)."""
    notes = []
    if is_archived or (stage or "").lower() == "archived":
        notes.append("it is archived in the registry (no new fine-tuning or deployments are supported)")
    for key in sorted(tags):
        lowered = key.lower()
        kind = "retired" if "retirement" in lowered else "deprecated" if "deprecation" in lowered else None
        match = _DATE.search(str(tags[key])) if kind else None
        if not match:
            continue
        when = date(int(match[1]), int(match[2]), int(match[3]))
        scope = (
            "fine-tuning" if "finetun" in lowered else "inference" if "inferenc" in lowered else "the model"
        )
        if when <= today:
            notes.append(f"{scope} was {kind} on {when.isoformat()} ({key})")
        else:
            notes.append(f"{scope} will be {kind} on {when.isoformat()} ({key})")
    return notes


def is_chat_completion(tags: dict[str, Any], properties: dict[str, Any] | None = None) -> bool:
    """Whether a model's tags (or properties) name the chat-completion task."""
    values = [tags.get("task"), (properties or {}).get("finetuning-tasks"), tags.get("finetuning-tasks")]
    return any(isinstance(v, str) and "chat-completion" in v.lower() for v in values)


def is_finetunable(tags: dict[str, Any], properties: dict[str, Any] | None, today: date) -> bool:
    """Whether a registry model says it can be fine-tuned for chat completion now: its `finetuning-tasks`
    property (azureml-assets' model.yaml) or a finetune allow-list tag, and no fine-tuning retirement
    date that has passed."""
    tasks = str((properties or {}).get("finetuning-tasks") or tags.get("finetuning-tasks") or "")
    if "chat-completion" not in tasks.lower() and not tags.get(FINETUNE_TAG):
        return False
    return not any(
        "retired" in note and note.startswith("fine-tuning") for note in lifecycle(tags, False, None, today)
    )


def family(name: str) -> str:
    """A model family key: the leading letters of its name ('Phi-3-mini-4k-instruct' -> 'phi')."""
    match = re.match(r"[A-Za-z]+", name.split("/")[-1])
    return match.group(0).lower() if match else name.lower()


def generation(name: str) -> tuple[float, str]:
    """A sort key, newest first: the first number in the name ('Phi-3.5-...' -> 3.5), then the name."""
    match = re.search(r"\d+(?:\.\d+)?", name)
    return (-float(match.group(0)) if match else 0.0, name.lower())
