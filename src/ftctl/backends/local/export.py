"""`ftctl export`: the fine-tuned model in the formats people run, checked by an independent reader.

Formats (FORMATS):
  merged   a plain transformers folder: safetensors, tokenizer, chat template, generation_config.json
           whose eos_token_id lists the end-of-turn token (so `generate` stops where the endpoint does)
  adapter  the PEFT LoRA folder (adapter_config.json, adapter_model.safetensors) and the tokenizer;
           LoRA jobs only
  gguf     one model.gguf (float32 tensors, llama.cpp's names and metadata, the tokenizer and chat template)
           for the architectures ftctl trains: Phi-3 and the Llama family (ftctl.backends.local.gguf_export)
  ollama   model.gguf plus a Modelfile with the chat template and the stop tokens

The source is the registered version's job (or `--job`). The export is written to a temporary folder
beside OUT and moved into place once written; then the fidelity check (export_check) loads it back with
transformers and compares it with the fine-tuned model. Its figures go into OUT/ftctl_export.json; a
mismatch beyond tolerance is exit 1 naming what differs (the folder stays, for inspection).
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
from ftctl.records import StateView

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import State

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
    """What an export is made from: one job's outputs."""

    job_id: str
    job_dir: Path
    hf_dir: Path  # the merged model + tokenizer (outputs/hf_model)
    adapter_dir: Path | None  # outputs/adapter (LoRA jobs)
    base_dir: Path  # the model that was fine-tuned
    registered: str | None  # "name vN" when exported from the registered version
    held_out: Path | None  # the prepared held-out split (prompts for the check)


def source(ctx: Context, state: State, job: str | None) -> Source:
    """The registered version's job, or the job `job` names (exit 2 when there is none)."""
    from ftctl.backends.local.backend import local
    from ftctl.models.layout import resolve_hf_dir
    from ftctl.stages.shared import prepared_files

    recorded = StateView(state)
    registered = None
    if job is None:
        reg = recorded.register
        if not reg.version:
            raise UsageError(
                "nothing is registered to export", hint="run `ftctl register`, or pass --job JOB_ID"
            )
        job_id = str(recorded.submit.need("job_id"))
        registered = f"{reg.model_name} v{reg.version}"
    else:
        job_id = job
    jobs_dir = local(ctx).jobs_dir
    job_dir = jobs_dir / job_id
    if "/" in job_id or job_id.startswith(".") or not (job_dir / "spec.json").is_file():
        raise UsageError(f"no job {job_id!r} in {jobs_dir}", hint="`ftctl status` names the job")
    hf_dir = job_dir / "outputs" / "hf_model"
    if not (hf_dir / "config.json").is_file():
        raise UsageError(f"job {job_id} has no trained model ({hf_dir} is missing): it did not complete")
    spec = json.loads((job_dir / "spec.json").read_text(encoding="utf-8"))
    adapter = job_dir / "outputs" / "adapter"
    files = prepared_files(state)
    split = ctx.cfg.data.test_split
    held = Path(files[split]["path"]) if split in files else None
    return Source(
        job_id=job_id,
        job_dir=job_dir,
        hf_dir=hf_dir,
        adapter_dir=adapter if (adapter / "adapter_config.json").is_file() else None,
        base_dir=resolve_hf_dir(Path(spec["model_path"])),
        registered=registered,
        held_out=held,
    )


def _prepare_out(out: Path) -> Path:
    """OUT must be new (or an empty folder); returns the temporary folder the export is written to."""
    out = out.expanduser()
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise UsageError(f"{out} exists and is not an empty folder", hint="name a new folder")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a folder")
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
    from ftctl.backends.local.evaluate import load_tokenizer, stop_token_ids

    return stop_token_ids(load_tokenizer(hf_dir), hf_dir)


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
    if src.adapter_dir is None:
        raise UsageError(
            f"job {src.job_id} trained no LoRA adapter (finetune.apply_lora was false)",
            hint="export --format merged",
        )
    for path in src.adapter_dir.iterdir():
        if path.is_file() and path.name not in TOKENIZER_FILES and path.name != "training_args.bin":
            shutil.copy2(path, dest / path.name)
    _copy_tokenizer(src.hf_dir, dest)
    _generation_config(src.hf_dir, dest)


def write_gguf(src: Source, dest: Path) -> None:
    from ftctl.backends.local.gguf_export import write_gguf as write

    write(src.hf_dir, dest / "model.gguf", stop_ids(src.hf_dir))


def write_ollama(src: Source, dest: Path) -> None:
    from ftctl.backends.local.gguf_export import modelfile

    write_gguf(src, dest)
    (dest / "Modelfile").write_text(
        modelfile(src.hf_dir, "model.gguf", stop_ids(src.hf_dir)), encoding="utf-8"
    )


WRITERS = {"merged": write_merged, "adapter": write_adapter, "gguf": write_gguf, "ollama": write_ollama}


def export(ctx: Context, state: State, fmt: str, out: Path, job: str | None) -> dict[str, Any]:
    """Write the export, check it, record the figures; StageFailed (exit 1) when the check fails."""
    from ftctl.backends.local.export_check import check

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    src = source(ctx, state, job)
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
