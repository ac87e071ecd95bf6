"""What a registry model says about itself: compute allow-lists, model-specific finetune defaults and
its lifecycle (archived, deprecated, retired). Pure functions over plain data (no azure imports).

Two layouts exist in the `azureml` registry:

- the notebook's: tags `finetune_compute_allow_list` / `inference_compute_allow_list` (a string holding a
  Python list literal) and `model_specific_defaults` (a string holding a dict literal);
- since the 2026-06/07 metadata migration (azureml-assets' spec.yaml files): the model's
  `system_metadata` with `tasks.fineTuningTasks`, `supportedComputes.{finetuneComputes,inferenceComputes}`,
  `SKU.{finetuneRecommendedSkus,inferenceRecommendedSkus}` and `deprecation.*` dates (ISO timestamps);
  `model_specific_defaults` stayed a tag. Old versions may still carry `properties.finetuning-tasks`.
  The casing on the wire is not public, so the reader is tolerant: key spelling and case do not matter,
  lists may be lists or strings, and supportedComputes may also be a list of
  ``{"scenario"|"type"|"task": ..., "skus"|"computes"|"vmSizes": [...]}`` entries.

system_metadata is read first, then the old tags and properties.
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
    """(finetune allow-list, inference allow-list, where they came from): system_metadata.supportedComputes
    first (where the registry keeps them since 2026-06), else the tags the notebook reads."""
    supported = supported_computes(system_metadata)
    if supported:
        return supported.get("finetune"), supported.get("inference"), "system_metadata.supportedComputes"
    finetune = parse_list(tags.get(FINETUNE_TAG))
    inference = parse_list(tags.get(INFERENCE_TAG))
    if finetune or inference:
        return finetune, inference, "tags"
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


def lifecycle_dates(tags: dict[str, Any], system_metadata: Any = None) -> dict[str, date]:
    """The model's deprecation/retirement/legacy dates by normalised key (e.g. 'finetuneretirementdate'):
    system_metadata.deprecation first, then the old date tags (same names, other casing)."""
    found: dict[str, date] = {}
    deprecation = _find(system_metadata, "deprecation", "lifecycle")
    sources = [deprecation if isinstance(deprecation, dict) else {}, tags]
    for source in sources:
        for key, value in source.items():
            lowered = _norm(key)
            if not any(word in lowered for word in ("retirement", "deprecation", "legacy")):
                continue
            match = _DATE.search(str(value))
            if match and lowered not in found:
                found[lowered] = date(int(match[1]), int(match[2]), int(match[3]))
    return found


def lifecycle(
    tags: dict[str, Any], is_archived: bool, stage: str | None, today: date, system_metadata: Any = None
) -> list[str]:
    """Warnings about an archived, deprecated or retired model ([] when there is nothing to say)."""
    notes = []
    if is_archived or (stage or "").lower() == "archived":
        notes.append("it is archived in the registry (no new fine-tuning or deployments are supported)")
    for key, when in sorted(lifecycle_dates(tags, system_metadata).items()):
        kind = "retired" if "retirement" in key else "deprecated" if "deprecation" in key else None
        if kind is None:
            continue
        scope = "fine-tuning" if "finetun" in key else "inference" if "inferenc" in key else "the model"
        if when <= today:
            notes.append(f"{scope} was {kind} on {when.isoformat()}")
        else:
            notes.append(f"{scope} will be {kind} on {when.isoformat()}")
    return notes


def retired(tags: dict[str, Any], today: date, scope: str, system_metadata: Any = None) -> date | None:
    """The date `scope` ('finetune' or 'inference') was retired, when that date has passed."""
    for key, when in lifecycle_dates(tags, system_metadata).items():
        if scope in key and "retirement" in key and when <= today:
            return when
    return None


def _task_list(system_metadata: Any, *names: str) -> list[str]:
    found = _find(system_metadata, "tasks")
    listed = parse_list(_find(found, *names)) if isinstance(found, dict) else None
    return [task.lower() for task in listed or []]


def tasks(tags: dict[str, Any], properties: dict[str, Any] | None, system_metadata: Any = None) -> list[str]:
    """The tasks a model can be fine-tuned for: system_metadata.tasks.fineTuningTasks, else the
    `finetuning-tasks` property (or tag) of older versions."""
    listed = _task_list(system_metadata, "fineTuningTasks", "finetuning_tasks")
    if listed:
        return listed
    text = str((properties or {}).get("finetuning-tasks") or tags.get("finetuning-tasks") or "")
    return [part.strip().lower() for part in text.split(",") if part.strip()]


def inference_tasks(tags: dict[str, Any], system_metadata: Any = None) -> list[str]:
    """The tasks a model serves: system_metadata.tasks.inferenceTasks, else its `task` tag."""
    listed = _task_list(system_metadata, "inferenceTasks", "inference_tasks")
    if listed:
        return listed
    task = tags.get("task")
    return [task.strip().lower()] if isinstance(task, str) and task.strip() else []


def recommended_skus(system_metadata: Any, scope: str) -> list[str]:
    """system_metadata.SKU.<scope>RecommendedSkus ('finetune' or 'inference'), [] when absent."""
    sku = _find(system_metadata, "SKU", "skus")
    return parse_list(_find(sku, f"{scope}RecommendedSkus", f"{scope}_recommended_skus")) or []


def is_chat_completion(
    tags: dict[str, Any], properties: dict[str, Any] | None = None, system_metadata: Any = None
) -> bool:
    """Whether a model says it does chat completion: system_metadata's tasks, else its tags/properties."""
    found = tasks(tags, properties, system_metadata) + inference_tasks(tags, system_metadata)
    return any("chat-completion" in task for task in found)


def is_finetunable(
    tags: dict[str, Any], properties: dict[str, Any] | None, today: date, system_metadata: Any = None
) -> bool:
    """Whether a registry model says it can be fine-tuned for chat completion now: chat-completion among
    its fine-tuning tasks (system_metadata.tasks.fineTuningTasks, or the older `finetuning-tasks`
    property) or a finetune allow-list, and no fine-tuning retirement date that has passed."""
    listed = any("chat-completion" in task for task in tasks(tags, properties, system_metadata))
    if not listed and not compute_lists(tags, system_metadata)[0]:
        return False
    return retired(tags, today, "finetune", system_metadata) is None


def family(name: str) -> str:
    """A model family key: the leading letters of its name ('Phi-3-mini-4k-instruct' -> 'phi')."""
    match = re.match(r"[A-Za-z]+", name.split("/")[-1])
    return match.group(0).lower() if match else name.lower()


def generation(name: str) -> tuple[float, str]:
    """A sort key, newest first: the first number in the name ('Phi-3.5-...' -> 3.5), then the name."""
    match = re.search(r"\d+(?:\.\d+)?", name)
    return (-float(match.group(0)) if match else 0.0, name.lower())


# VM sizes Azure has retired: the original NC series (the notebook's deny list) and NCv3 (azureml-examples
# moved the notebook off Standard_NC6s_v3 in its "NCv3 VM retirement update").
_RETIRED_SIZE = re.compile(r"^standard_nc(6|12|24|24r)$|^standard_nc\d+r?s_v3$", re.IGNORECASE)


def size_retired(size: str) -> bool:
    return bool(_RETIRED_SIZE.match(size.strip()))


def allowed_sizes(allow: list[str] | None) -> list[str]:
    """The sizes of an allow-list that are not retired."""
    return [size for size in allow or [] if not size_retired(size)]


def inference_size(allow: list[str] | None, recommended: list[str]) -> str | None:
    """The size to deploy on when deploy.instance_type is not set: the first recommended size that is in
    the allow-list and not retired, else the allow-list's first size that is not retired."""
    allowed = allowed_sizes(allow)
    lowered = {size.lower() for size in allowed}
    for size in recommended:
        if (not allowed or size.lower() in lowered) and not size_retired(size):
            return size
    return allowed[0] if allowed else None


# The tag a model carries when it is fine-tuned through the fine-tuning job API and served serverless
# (azureml-examples, sdk/python/jobs/finetuning/standalone/model-as-a-service/chat-completion: the regions
# a fine-tuned model can be deployed to).
MAAS_REGIONS_TAG = "maas-finetuning-deploy-regions"


def finetune_route(tags: dict[str, Any], system_metadata: Any = None) -> tuple[str, list[str]]:
    """How the model is fine-tuned by what it advertises: "job" (the fine-tuning job API) when it names
    the regions its fine-tuned models deploy to, else "pipeline" (chat_completion_pipeline); and those
    regions."""
    value = tags.get(MAAS_REGIONS_TAG)
    if value is None:
        value = _find(system_metadata, MAAS_REGIONS_TAG, "maasFinetuningDeployRegions")
    regions = parse_list(value) or []
    return ("job" if regions else "pipeline"), regions
