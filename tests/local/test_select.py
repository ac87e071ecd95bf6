"""finetune.select (issue 20): `best` puts the checkpoint with the lowest held-out loss into the model the
job outputs, `last` keeps the final weights; on the trained snapshot's own checkpoints (no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ftctl.backends.local import checkpoints
from ftctl.backends.local import trainer as tr
from harness import Ftctl


def _setup(trained_ws: Ftctl, tmp_path: Path, select: str) -> tuple[Any, Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    job_dir = Path(trained_ws.outputs("submit")["job_dir"])
    copy = tmp_path / job_dir.name
    shutil.copytree(job_dir / "checkpoints", copy / "checkpoints")
    spec = json.loads((job_dir / "spec.json").read_text())
    spec["params"] = {**spec["params"], "select": select}
    events: list[dict[str, Any]] = []
    job = tr._new_job(spec, copy, events.append)
    base = AutoModelForCausalLM.from_pretrained(spec["model_path"])
    model = PeftModel.from_pretrained(base, str(job_dir / "outputs" / "adapter"))
    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    return job, trainer, events


def _lora_state(model: Any) -> dict[str, Any]:
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}


@pytest.mark.parametrize("select", ["best", "last"])
def test_select_best_loads_the_checkpoint_with_the_lowest_loss(
    trained_ws: Ftctl, tmp_path: Path, select: str
) -> None:
    import torch
    from safetensors.torch import load_file

    job, trainer, events = _setup(trained_ws, tmp_path, select)
    found = checkpoints.complete(job.checkpoints)
    assert [c.step for c in found] == [2, 4, 6, 8]
    # Make step 4 the best: its manifest's loss (not a file the manifest checks) below the final one.
    manifest_path = found[1].path / checkpoints.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["eval_loss"] = 0.5
    manifest_path.write_text(json.dumps(manifest))
    before = _lora_state(trainer.model)
    fitted = tr._Fitted(steps=8, train_loss=3.8, train_tokens=1, runtime=1.0, eval_loss=3.7, perplexity=40.0)
    chosen = tr._select(job, trainer, fitted)
    after = _lora_state(trainer.model)
    if select == "last":
        assert (
            chosen["selected_step"] == 8 and chosen["selected_eval_loss"] == 3.7 and fitted.eval_loss == 3.7
        )
        assert all(torch.equal(before[k], after[k]) for k in before)
        return
    assert chosen == {"select": "best", "final_eval_loss": 3.7, "selected_step": 4, "selected_eval_loss": 0.5}
    assert fitted.eval_loss == 0.5  # the figure the result (and register's gate) reports
    saved = load_file(str(found[1].path / "adapter_model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for key, value in saved.items():  # the model now holds exactly step 4's adapter
        live = [v for k, v in after.items() if k.replace(".default", "") == key]
        assert len(live) == 1 and torch.equal(live[0], value), key
    assert events[-1]["type"] == "selected" and events[-1]["step"] == 4


def test_select_best_keeps_the_last_weights_when_they_are_best(trained_ws: Ftctl, tmp_path: Path) -> None:
    job, trainer, _ = _setup(trained_ws, tmp_path, "best")
    fitted = tr._Fitted(steps=8, train_loss=3.8, train_tokens=1, runtime=1.0, eval_loss=0.1, perplexity=1.1)
    assert tr._select(job, trainer, fitted)["selected_step"] == 8


def test_register_records_the_selected_step(trained_ws: Ftctl) -> None:
    submit, register = trained_ws.outputs("submit"), trained_ws.outputs("register")
    assert submit["select"] == "last" and submit["selected_step"] == submit["steps"] == 8
    assert register["selected_step"] == 8 and register["selected_eval_loss"] == submit["eval_loss"]
    assert register["tags"]["ftctl.selected_step"] == "8"
    assert "model: the weights of step 8 (select: last)" in trained_ws.transcripts["register"]
