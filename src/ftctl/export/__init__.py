"""`ftctl export`: the fine-tuned model in the formats people run, checked by an independent reader.

Formats (FORMATS):
  merged   a plain transformers folder: safetensors, tokenizer, chat template, generation_config.json
           whose eos_token_id lists the end-of-turn token (so `generate` stops where the endpoint does)
  adapter  the PEFT LoRA folder (adapter_config.json, adapter_model.safetensors) and the tokenizer;
           LoRA jobs only
  gguf     one model.gguf (float32 tensors, llama.cpp's names and metadata, the tokenizer and chat template)
           for the architectures ftctl trains: Phi-3 and the Llama family (ftctl.export.gguf)
  ollama   model.gguf plus a Modelfile with the chat template and the stop tokens

Backend-neutral: each backend finds the fine-tuned model on this machine (the local backend: the
registered version's job, or `--job`; Azure ML: the registered version, downloaded first) and hands a
Source to `export`. The export is written to a temporary folder beside OUT and moved into place once
written; then the fidelity check (ftctl.export.check) loads it back with transformers and compares it with
the fine-tuned model. Its figures go into OUT/ftctl_export.json; a mismatch beyond tolerance is exit 1
naming what differs (the folder stays, for inspection).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.errors import StageFailed, UsageError

if TYPE_CHECKING:
    from ftctl.context import Context

FORMATS = ("merged", "adapter", "gguf", "ollama")
REPORT = "ftctl_export.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
)


@dataclass(frozen=True)
class Source:
    """What an export is made from: one job's fine-tuned model, on this machine."""

    job_id: str
    job_dir: Path
    hf_dir: Path  # the merged model + tokenizer (the local job's outputs/hf_model, or the download's)
    adapter_dir: Path | None  # the PEFT adapter (local LoRA jobs), None where there is none
    base_dir: Path | None  # the model that was fine-tuned (where the adapter applies)
    registered: str | None  # "name vN" when exported from the registered version
    held_out: Path | None  # the prepared held-out split (prompts for the check)
    no_adapter: str = "finetune.apply_lora was false"  # why adapter_dir is None


def check_out(out: Path) -> Path:
    """OUT must be new (or an empty folder) in an existing folder (exit 2 before anything is read)."""
    out = out.expanduser().absolute()
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise UsageError(f"{out} exists and is not an empty folder", hint="name a new folder")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a folder")
    return out


def _prepare_out(out: Path) -> Path:
    """The temporary folder beside OUT the export is written to."""
    out = check_out(out)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _copy_tokenizer(src: Path, dest: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)


def stop_ids(hf_dir: Path) -> list[int]:
    """The tokens a reply ends on (end of turn, eos), as the endpoint stops."""
    from ftctl.data.chat_tokens import load_chat_tokenizer, stop_token_ids

    return stop_token_ids(load_chat_tokenizer(hf_dir), hf_dir)


def write_merged(src: Source, dest: Path) -> None:
    """The merged model folder, its generation config ending on the end-of-turn token too."""
    for path in src.hf_dir.iterdir():
        if path.is_file():
            shutil.copy2(path, dest / path.name)
    _generation_config(src.hf_dir, dest)


def _generation_config(hf_dir: Path, dest: Path) -> None:
    config_path = dest / "generation_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    config["eos_token_id"] = stop_ids(hf_dir)
    config.setdefault("do_sample", False)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def write_adapter(src: Source, dest: Path) -> None:
    """The PEFT adapter folder as trained, with the tokenizer and a generation config."""
    if src.adapter_dir is None or src.base_dir is None:
        raise UsageError(
            f"job {src.job_id} has no LoRA adapter to export ({src.no_adapter})",
            hint="export --format merged",
        )
    for path in src.adapter_dir.iterdir():
        if path.is_file() and path.name not in TOKENIZER_FILES and path.name != "training_args.bin":
            shutil.copy2(path, dest / path.name)
    _copy_tokenizer(src.hf_dir, dest)
    _generation_config(src.hf_dir, dest)


def write_gguf(src: Source, dest: Path) -> None:
    from ftctl.export.gguf import write_gguf as write

    write(src.hf_dir, dest / "model.gguf", stop_ids(src.hf_dir))


def write_ollama(src: Source, dest: Path) -> None:
    from ftctl.export.gguf import modelfile

    write_gguf(src, dest)
    (dest / "Modelfile").write_text(
        modelfile(src.hf_dir, "model.gguf", stop_ids(src.hf_dir)), encoding="utf-8"
    )


WRITERS = {"merged": write_merged, "adapter": write_adapter, "gguf": write_gguf, "ollama": write_ollama}


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")


def export(ctx: Context, src: Source, fmt: str, out: Path) -> dict[str, Any]:
    """Write the export of `src`, check it, record the figures; StageFailed (exit 1) when the check
    fails."""
    from ftctl.export.check import check

    check_format(fmt)
    out = out.expanduser().absolute()
    tmp = _prepare_out(out)
    started = time.perf_counter()
    try:
        with ctx.ui.spinner(f"writing the {fmt} export of job {src.job_id}"):
            WRITERS[fmt](src, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(tmp, out)
    with ctx.ui.spinner("checking the export with an independent reader", quiet=True):
        figures = check(src, fmt, out)
    report = {
        "format": fmt,
        "job_id": src.job_id,
        "registered": src.registered,
        "source": str(src.hf_dir),
        "seconds": round(time.perf_counter() - started, 2),  # writing and checking
        "files": sorted(p.name for p in out.iterdir() if p.is_file()),
        "check": figures,
    }
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not figures["ok"]:
        raise StageFailed(
            f"the {fmt} export in {out} differs from the fine-tuned model: {'; '.join(figures['problems'])}",
            hint=f"the figures are in {out / REPORT}",
        )
    return {**report, "out": str(out)}
