"""The checkpoint folders' rules (ftctl.backends.local.checkpoints), on hand-made folders: what counts as
complete, what resuming passes over, what rotation keeps, what the plan counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftctl.backends.local import checkpoints


def make(root: Path, step: int, loss: float | None, max_steps: int = 10) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(bytes(range(256)) * (step + 1))
    (folder / "sub").mkdir()
    (folder / "sub" / "adapter.bin").write_bytes(b"w" * step)
    checkpoints.write_manifest(folder, step, max_steps, loss, "run-1")
    return folder


def test_complete_checkpoints_in_step_order(tmp_path: Path) -> None:
    for step in (10, 2, 4):
        make(tmp_path, step, 1.0 / step)
    (tmp_path / "checkpoint-x").mkdir()  # not a step: ignored
    (tmp_path / "other").mkdir()
    found = checkpoints.complete(tmp_path, verify=True)
    assert [c.step for c in found] == [2, 4, 10]
    assert found[0].eval_loss == 0.5 and found[0].mlflow_run_id == "run-1"
    assert checkpoints.latest(tmp_path).step == 10  # type: ignore[union-attr]
    assert found[-1].describe() == "step 10 of 10, eval_loss 0.1000"


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda f: (f / checkpoints.MANIFEST).unlink(), "incomplete"),
        (lambda f: (f / checkpoints.MANIFEST).write_text("{"), "damaged manifest"),
        (lambda f: (f / "optimizer.pt").write_bytes(b"short"), "optimizer.pt has 5 bytes"),
        (lambda f: (f / "sub" / "adapter.bin").unlink(), "sub/adapter.bin is missing"),
        (lambda f: (f / "sub" / "adapter.bin").write_bytes(b"x" * 6), "does not match its checksum"),
    ],
)
def test_resume_passes_over_a_partial_or_damaged_last_checkpoint(tmp_path: Path, damage, why: str) -> None:
    make(tmp_path, 4, 0.5)
    last = make(tmp_path, 6, 0.4)
    damage(last)
    found, skipped = checkpoints.resume_point(tmp_path)
    assert found is not None and found.step == 4
    assert len(skipped) == 1 and skipped[0].startswith("checkpoint-6: ") and why in skipped[0]
    checkpoints.discard_after(tmp_path, found.step)
    assert [p.name for p in checkpoints.folders(tmp_path)] == ["checkpoint-4"]


def test_no_checkpoint_to_resume(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-2").mkdir()
    assert checkpoints.resume_point(tmp_path) == (
        None,
        ["checkpoint-2: incomplete (no manifest: the save was cut short)"],
    )
    assert checkpoints.resume_point(tmp_path / "missing") == (None, [])


def test_a_manifest_copied_into_another_step_is_refused(tmp_path: Path) -> None:
    folder = make(tmp_path, 4, 0.5)
    folder.rename(tmp_path / "checkpoint-8")
    assert checkpoints.read(tmp_path / "checkpoint-8")[1] == "its manifest names another step"


def test_rotation_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    for step, loss in ((2, 0.9), (4, 0.3), (6, 0.5), (8, 0.6)):
        make(tmp_path, step, loss)
    (tmp_path / "checkpoint-10").mkdir()  # being written: never rotated away
    removed = checkpoints.rotate(tmp_path, limit=1, keep_best=True)
    assert sorted(p.name for p in removed) == ["checkpoint-2", "checkpoint-6"]
    assert [p.name for p in checkpoints.folders(tmp_path)] == [
        "checkpoint-4",
        "checkpoint-8",
        "checkpoint-10",
    ]
    assert checkpoints.best(checkpoints.complete(tmp_path)).step == 4  # type: ignore[union-attr]
    checkpoints.rotate(tmp_path, limit=1, keep_best=False)
    assert [c.step for c in checkpoints.complete(tmp_path)] == [8]
    assert checkpoints.rotate(tmp_path, limit=-1, keep_best=False) == []


def test_best_prefers_the_earliest_on_a_tie_and_needs_a_loss(tmp_path: Path) -> None:
    make(tmp_path, 2, 0.5)
    make(tmp_path, 4, 0.5)
    make(tmp_path, 6, None)
    assert checkpoints.best(checkpoints.complete(tmp_path)).step == 2  # type: ignore[union-attr]
    assert checkpoints.best([c for c in checkpoints.complete(tmp_path) if c.eval_loss is None]) is None


def test_the_manifest_records_every_file(tmp_path: Path) -> None:
    folder = make(tmp_path, 2, None)
    manifest = json.loads((folder / checkpoints.MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["optimizer.pt", "sub/adapter.bin"]
    assert manifest["eval_loss"] is None and manifest["max_steps"] == 10
    assert not list(folder.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("save_steps", "steps", "limit", "select", "every", "kept"),
    [
        (None, 8, -1, "last", 2, 4),  # null: at every evaluation (a quarter of the run)
        (None, 400, 2, "last", 100, 2),
        (None, 400, 2, "best", 100, 3),  # the best one besides the newest two
        (3, 10, -1, "last", 3, 4),  # steps 3, 6, 9 and the last one
        (0, 10, -1, "last", 0, 0),  # no checkpoints
        (20, 10, -1, "last", 20, 1),  # fewer steps than the interval: the last step's only
    ],
)
def test_what_the_plan_counts(save_steps, steps, limit, select, every, kept) -> None:
    assert checkpoints.save_interval(save_steps, steps) == every
    assert checkpoints.checkpoint_count(save_steps, steps, limit, select) == kept


def test_checkpoint_bytes() -> None:
    # LoRA: the adapter in float32 and AdamW's two moments; a full fine-tune: the whole model as weights
    assert checkpoints.checkpoint_bytes(1000, 10**6, lora=True) == 1000 * 12 + 32 * 1024
    assert (
        checkpoints.checkpoint_bytes(10**6, 10**6, lora=False, tokenizer_bytes=5)
        == 12 * 10**6 + 5 + 32 * 1024
    )
