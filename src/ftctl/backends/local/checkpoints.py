"""The local trainer's checkpoints: when to save, what makes one complete, which to resume or select.

A checkpoint is the Trainer's folder `job_dir/checkpoints/checkpoint-<step>` (the adapter under LoRA or the
model, the optimizer, the scheduler, the RNG states and the Trainer state, whose step is the position in
the data) plus ftctl's manifest, `ftctl_checkpoint.json`: the step, the run's steps, the held-out loss at
that step, and the size and SHA-256 of every file. The manifest is written last, atomically, after every
file is flushed to disk: a folder without one (a save cut short by a kill or a full disk) or whose files
no longer match it (damaged since) is not a checkpoint, and resuming passes over it to the one before.

Saved every `finetune.save_steps` optimizer steps (null: at every evaluation) and, with
`finetune.save_minutes`, whenever that many minutes passed since the last save; the held-out loss is
measured at every save (`select: best` picks by it). `finetune.save_total_limit` checkpoints are kept (the
newest; under `select: best` the best one too). Imports nothing heavy at module level.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftctl.plan import eval_every

MANIFEST = "ftctl_checkpoint.json"
PREFIX = "checkpoint-"


@dataclass(frozen=True)
class Checkpoint:
    """One complete checkpoint, as its manifest records it."""

    path: Path
    step: int
    max_steps: int
    eval_loss: float | None
    saved_at: float
    mlflow_run_id: str | None = None

    def describe(self) -> str:
        loss = "" if self.eval_loss is None else f", eval_loss {self.eval_loss:.4f}"
        return f"step {self.step} of {self.max_steps}{loss}"


def save_interval(save_steps: int | None, planned_steps: int) -> int:
    """Steps between checkpoints: `finetune.save_steps`, or the evaluation interval when null; 0 = none."""
    if save_steps is None:
        return eval_every(planned_steps)
    return int(save_steps)


def checkpoint_count(save_steps: int | None, planned_steps: int, limit: int, select: str = "last") -> int:
    """How many checkpoints a run keeps on disk at most (what the plan counts)."""
    every = save_interval(save_steps, planned_steps)
    if every <= 0 or planned_steps <= 0:
        return 0
    saves = planned_steps // every + (1 if planned_steps % every else 0)  # the Trainer saves at the end too
    kept = saves if limit < 0 else min(saves, limit)
    return kept + (1 if select == "best" and limit > 0 and saves > kept else 0)


def checkpoint_bytes(trainable: int, total: int, lora: bool, tokenizer_bytes: int = 0) -> int:
    """One checkpoint's size: the trained weights (float32), AdamW's two moments of them, the tokenizer
    the Trainer saves beside them; a full fine-tune saves the whole model as the weights."""
    weights = (trainable if lora else total) * 4
    return weights + trainable * 8 + tokenizer_bytes + 32 * 1024  # + scheduler, RNG, Trainer state


def tokenizer_bytes(model_dir: Path) -> int:
    """The size of the tokenizer files of a model folder (what a checkpoint carries of them)."""
    names = ("tokenizer*", "*.jinja", "special_tokens_map.json", "*.model", "vocab.*", "merges.txt")
    found = {path for pattern in names for path in model_dir.glob(pattern) if path.is_file()}
    return sum(path.stat().st_size for path in found)


# --- reading ----------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _step_of(folder: Path) -> int | None:
    name = folder.name
    if not name.startswith(PREFIX) or not name[len(PREFIX) :].isdigit():
        return None
    return int(name[len(PREFIX) :])


def read(folder: Path, verify: bool = True) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint in `folder`, or (None, why it is not one). `verify` hashes every file."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        step, max_steps, files = int(manifest["step"]), int(manifest["max_steps"]), dict(manifest["files"])
    except FileNotFoundError:
        return None, "incomplete (no manifest: the save was cut short)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"damaged manifest ({type(exc).__name__})"
    if step != _step_of(folder):
        return None, "its manifest names another step"
    for name, recorded in sorted(files.items()):
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            return None, f"{name} is missing"
        if size != recorded.get("size"):
            return None, f"{name} has {size} bytes, the manifest says {recorded.get('size')}"
        if verify and _sha256(path) != recorded.get("sha256"):
            return None, f"{name} does not match its checksum"
    loss = manifest.get("eval_loss")
    return Checkpoint(
        path=folder,
        step=step,
        max_steps=max_steps,
        eval_loss=float(loss) if isinstance(loss, (int, float)) else None,
        saved_at=float(manifest.get("saved_at") or 0.0),
        mlflow_run_id=manifest.get("mlflow_run_id"),
    ), None


def folders(root: Path) -> list[Path]:
    """The checkpoint-<step> folders under `root`, oldest step first."""
    try:
        found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None]
    except OSError:
        return []
    return sorted(found, key=lambda p: _step_of(p) or 0)


def complete(root: Path, verify: bool = False) -> list[Checkpoint]:
    """Every complete checkpoint under `root`, oldest first (`verify` hashes their files)."""
    found = []
    for folder in folders(root):
        checkpoint, _ = read(folder, verify=verify)
        if checkpoint is not None:
            found.append(checkpoint)
    return found


def latest(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint (by its manifest and sizes: cheap, for `ftctl status`)."""
    found = complete(root, verify=False)
    return found[-1] if found else None


def resume_point(root: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint whose files all match their checksums, and a line for each newer folder
    passed over (incomplete or damaged)."""
    skipped: list[str] = []
    for folder in reversed(folders(root)):
        checkpoint, why = read(folder, verify=True)
        if checkpoint is not None:
            return checkpoint, skipped
        skipped.append(f"{folder.name}: {why}")
    return None, skipped


def discard_after(root: Path, step: int) -> None:
    """Remove the checkpoint folders newer than `step` (passed over: the resumed run saves them again)."""
    for folder in folders(root):
        if (_step_of(folder) or 0) > step:
            shutil.rmtree(folder, ignore_errors=True)


def remove_all(root: Path) -> None:
    """Delete every checkpoint folder under `root` (a job started over with `--restart`)."""
    for folder in folders(root):
        shutil.rmtree(folder, ignore_errors=True)


def best(found: list[Checkpoint]) -> Checkpoint | None:
    """The checkpoint with the lowest held-out loss (the earliest on a tie); None without losses."""
    scored = [c for c in found if c.eval_loss is not None]
    return min(scored, key=lambda c: (c.eval_loss, c.step)) if scored else None


# --- writing ----------------------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(
    folder: Path, step: int, max_steps: int, eval_loss: float | None, run_id: str | None
) -> None:
    """Seal `folder` as a complete checkpoint: flush its files, then write the manifest atomically."""
    files = {}
    for path in _files(folder):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {
        "step": step,
        "max_steps": max_steps,
        "eval_loss": eval_loss,
        "saved_at": round(time.time(), 3),
        "mlflow_run_id": run_id,
        "files": files,
    }
    tmp = folder / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST)
    _fsync(folder)


def rotate(root: Path, limit: int, keep_best: bool) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `limit` (-1: keep all); under `keep_best` the best
    one stays besides. Returns the deleted folders."""
    if limit < 0:
        return []
    found = complete(root)
    keep = {c.path for c in found[-limit:]} if limit > 0 else set()
    chosen = best(found) if keep_best else None
    if chosen is not None:
        keep.add(chosen.path)
    removed = []
    for checkpoint in found:
        if checkpoint.path not in keep:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
            removed.append(checkpoint.path)
    return removed


def load_weights(model: Any, checkpoint: Checkpoint, lora: bool) -> None:
    """Put the checkpoint's trained weights into `model` (the adapter under LoRA, else the model)."""
    from safetensors.torch import load_file

    folder = checkpoint.path
    if lora:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    if (folder / "model.safetensors").exists():
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        return
    from transformers.trainer_utils import load_sharded_checkpoint

    load_sharded_checkpoint(model, str(folder), strict=False)


# --- the Trainer callback ---------------------------------------------------------------------------


@dataclass
class Policy:
    """When the job saves, and what it keeps."""

    every_steps: int  # 0: no step-based saves
    every_minutes: float | None
    limit: int  # save_total_limit (-1 = all)
    keep_best: bool  # select: best
    evaluate: bool  # there is held-out data: measure the loss at each save

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0 or self.every_minutes is not None


def policy_for(p: Any, planned_steps: int, has_eval: bool) -> Policy:
    """The checkpoint policy of a job's FinetuneSection `p` over `planned_steps` optimizer steps."""
    return Policy(
        every_steps=save_interval(p.save_steps, planned_steps),
        every_minutes=p.save_minutes,
        limit=p.save_total_limit,
        keep_best=p.select == "best",
        evaluate=has_eval,
    )


def make_callback(
    policy: Policy,
    root: Path,
    emit: Callable[[dict[str, Any]], None],
    last_eval: Callable[[], dict[str, Any] | None],
    run_id: Callable[[], str | None],
) -> Any:
    """A TrainerCallback that saves on `policy`, seals each save with its manifest and rotates."""
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last_save = time.monotonic()

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if (
                policy.every_minutes is not None
                and time.monotonic() - self.last_save >= policy.every_minutes * 60
            ):
                control.should_save = True
            if control.should_save and policy.evaluate:
                control.should_evaluate = True  # every checkpoint knows its held-out loss
            return control

        def on_save(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()
            if not state.is_world_process_zero:
                return control
            folder = root / f"{PREFIX}{state.global_step}"
            if not folder.is_dir():
                return control
            measured = last_eval()
            loss = measured["eval_loss"] if measured and measured.get("step") == state.global_step else None
            write_manifest(folder, state.global_step, state.max_steps, loss, run_id())
            rotate(root, policy.limit, policy.keep_best)
            emit(
                {
                    "type": "checkpoint",
                    "step": state.global_step,
                    "max_steps": state.max_steps,
                    "eval_loss": loss,
                    "path": str(folder),
                }
            )
            return control

    return CheckpointCallback()
