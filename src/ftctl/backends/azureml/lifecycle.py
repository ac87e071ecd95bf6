"""What pick-model refuses before anything is spent, from where the registry keeps a model's lifecycle now
(system_metadata first, then the old tags and properties; ftctl.backends.azureml.metadata reads them):

- a model whose fine-tuning is retired, or that is archived: exit 2 naming the registry's active
  fine-tunable successors of the same family and the exact line that picks one (a retired model has no
  override; the service does not fine-tune it);
- a deploy size that is retired or outside the model's inference allow-list: exit 2 naming the allowed
  sizes. With deploy.instance_type unset, the model's recommended inference size within its allow-list is
  used.

azure.* is not imported here: the registry is read through the callables pick-model passes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from ftctl.backends.azureml.metadata import (
    allowed_sizes,
    family,
    generation,
    inference_size,
    is_finetunable,
    retired,
    size_retired,
)
from ftctl.errors import UsageError

SIZE_HINT = "set deploy.instance_type to one of them, or leave it unset for the model's recommended size"
MAX_CANDIDATES = 12  # same-family models whose latest version is read to judge them


def successors(
    name: str,
    containers: list[dict[str, Any]],
    latest: Callable[[str], dict[str, Any] | None],
    today: date,
) -> list[str]:
    """The active chat-completion fine-tunable models of `name`'s family, newest generation first.

    `containers` are the registry's model containers ({name, properties}); since the metadata migration
    they may not say what a model can do, so each same-family candidate's latest version is read
    (`latest(name)` -> its raw body, None when it cannot be read) and judged from its system_metadata."""
    wanted = family(name)
    candidates = sorted(
        {
            str(c["name"])
            for c in containers
            if c.get("name")
            and family(str(c["name"])) == wanted
            and str(c["name"]) != name
            and not (c.get("properties") or {}).get("isArchived")
        },
        key=generation,
    )[:MAX_CANDIDATES]
    found = []
    for candidate in candidates:
        body = latest(candidate)
        props = (body or {}).get("properties") or {}
        if not props or props.get("isArchived"):
            continue
        meta = props.get("systemMetadata") or props.get("system_metadata")
        if is_finetunable(props.get("tags") or {}, props.get("properties"), today, meta):
            found.append(candidate)
    return found


def pick_line(registry: str, found: list[str]) -> str:
    """The hint naming the successors and the exact setting that picks the first."""
    shown = ", ".join(found[:5]) + (f" (+{len(found) - 5} more)" if len(found) > 5 else "")
    return (
        f"fine-tunable successors in registry {registry!r}: {shown}; pick one with "
        f"--set model.name={found[0]} (or `name: {found[0]}` under `model:` in the config)"
    )


def refuse_retired(
    model: dict[str, Any], system_metadata: Any, tags: dict[str, Any], found: list[str], today: date
) -> None:
    """UsageError when the model's fine-tuning is retired or the model is archived (`model`: pick-model's
    outputs so far; `found`: its successors)."""
    when = retired(tags, today, "finetune", system_metadata)
    archived = bool(model.get("archived"))
    if when is None and not archived:
        return
    reasons = []
    if when is not None:
        reasons.append(f"its fine-tuning was retired on {when.isoformat()}")
    if archived:
        reasons.append("it is archived in the registry")
    registry = str(model.get("registry"))
    hint = (
        pick_line(registry, found)
        if found
        else "list the chat-completion models with `ftctl pick-model --list`, then set model.name"
    )
    raise UsageError(
        f"model.name={model.get('name')} (version {model.get('version')}) cannot be fine-tuned: "
        + " and ".join(reasons),
        hint=hint,
    )


def deploy_size(
    configured: str | None, allow: list[str] | None, recommended: list[str], required: bool = True
) -> tuple[str | None, str]:
    """(the size deploy uses, where it came from); UsageError naming deploy.instance_type and the allowed
    sizes when the configured one is retired or not in the model's inference allow-list. With nothing
    configured and nothing to choose from: UsageError when `required`, else (None, "none")."""
    allowed = allowed_sizes(allow)
    listed = ", ".join(allowed) or "none"
    if configured:
        if size_retired(configured):
            raise UsageError(
                f"deploy.instance_type={configured} is a retired VM size (NCv3 and older NC sizes are "
                f"retired); allowed for this model: {listed}",
                hint=SIZE_HINT,
            )
        if allow and configured.lower() not in {size.lower() for size in allow}:
            raise UsageError(
                f"deploy.instance_type={configured} is not in the model's inference allow-list; "
                f"allowed: {listed}",
                hint=SIZE_HINT,
            )
        return configured, "deploy.instance_type"
    chosen = inference_size(allow, recommended)
    if chosen is None and not required:
        return None, "none"
    if chosen is None:
        raise UsageError(
            "deploy.instance_type is not set and the model names no inference size that is not retired",
            hint="set deploy.instance_type",
        )
    return chosen, "the model's recommended inference size"
