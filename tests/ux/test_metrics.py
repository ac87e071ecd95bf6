"""`ftctl metrics`: the job's metrics from MLflow as a table, JSON and a loss-curve PNG."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_json_has_the_step_wise_curves(trained) -> None:
    data = trained.json("metrics")
    submit = trained.json("status")["stages"][4]["outputs"]
    assert data["run_id"] == submit["mlflow_run_id"] and data["job_id"] == submit["job_id"]
    assert data["status"] == "FINISHED"
    assert data["run_name"] == submit["display_name"]
    assert data["params"]["learning_rate"] == "0.002" and data["params"]["max_steps"] == "8"
    steps = {row["step"]: row for row in data["steps"]}
    # Train loss, learning rate and tokens/s every logging_steps (2) and at step 1.
    assert [s for s, row in steps.items() if row["train_loss"] is not None] == [1, 2, 4, 6, 8]
    assert all(steps[s]["learning_rate"] is not None and steps[s]["tokens_per_second"] > 0 for s in (2, 8))
    # Eval loss and perplexity before training, every quarter (2 steps), and at the end.
    evals = [
        (s, row["eval_loss"], row["perplexity"]) for s, row in steps.items() if row["eval_loss"] is not None
    ]
    assert [s for s, _, _ in evals] == [0, 2, 4, 6, 8]
    assert all(ppl == pytest.approx(2.718281828**loss, rel=1e-6) for _, loss, ppl in evals)
    assert evals[-1][1] < evals[0][1], "fine-tuning did not lower the eval loss"
    summary = data["summary"]
    assert summary["eval_loss"] == pytest.approx(evals[-1][1])
    assert summary["train_loss"] == pytest.approx(submit["train_loss"])
    assert summary["train_tokens"] > 0 and summary["tokens_per_second"] > 0
    assert data["plot"] is None


def test_table_and_plot(trained, tmp_path: Path) -> None:
    png = tmp_path / "loss.png"
    result = trained("metrics", "--plot", str(png))
    assert f"wrote {png}" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("run tiny-phi3-chat-ultrachat-bs8-cosine") and lines[0].endswith("(FINISHED)")
    assert "lr 0.002 (cosine) · batch 8 · 4 epochs · max_steps 8 · LoRA r=8 alpha=16 · seq 256" in lines[2]
    header = next(line for line in lines if line.startswith("STEP"))
    assert header.split() == ["STEP", "EPOCH", "TRAIN", "LOSS", "EVAL", "LOSS", "PERPLEXITY", "LR", "TOK/S"]
    assert any(line.startswith("0 ") and line.split()[1:3] == ["-", "-"] for line in lines)  # eval only
    assert lines[-1].startswith("final: train_loss ")
    width, height = _png_size(png)
    assert (width, height) == (990, 715)


def test_plot_shows_both_curves(trained) -> None:
    """What the figure draws: two labelled curves over the steps, labelled axes, the run in the title."""
    from ftctl import metrics as m

    found = m.RunMetrics(**{k: v for k, v in trained.json("metrics").items() if k != "plot"})
    fig = m.figure(found)
    top, bottom = fig.axes
    train_line, smoothed = top.get_lines()
    (eval_line,) = bottom.get_lines()
    assert train_line.get_label() == "train loss"
    assert list(train_line.get_xdata()) == [1, 2, 4, 6, 8]
    # The noisy per-log train loss gets a moving average on top: it starts at the first point and
    # stays within the range of the points.
    assert smoothed.get_label() == "train loss (smoothed)"
    raw, smooth = list(train_line.get_ydata()), list(smoothed.get_ydata())
    assert smooth[0] == pytest.approx(raw[0]) and min(raw) <= min(smooth) <= max(smooth) <= max(raw)
    assert eval_line.get_label() == "eval loss" and list(eval_line.get_xdata()) == [0, 2, 4, 6, 8]
    assert bottom.get_xlabel() == "training step"
    assert "train loss" in top.get_ylabel() and "eval loss" in bottom.get_ylabel()
    title = fig.get_suptitle()
    assert found.run_name in title and "lr 0.002 (cosine)" in title and "final eval loss" in title


def test_earlier_job_by_id_and_errors(trained, tmp_path: Path) -> None:
    job_id = trained.json("metrics")["job_id"]
    assert trained.json("metrics", "--run", job_id)["job_id"] == job_id
    assert "no job job-nope" in trained("metrics", "--run", "job-nope", code=2).stderr
    assert "no MLflow run 'abc123'" in trained("metrics", "--run", "abc123", code=2).stderr
    assert "give a .png file name" in trained("metrics", "--plot", str(tmp_path / "x.svg"), code=2).stderr
    missing = tmp_path / "no" / "such" / "dir" / "x.png"
    assert "does not exist" in trained("metrics", "--plot", str(missing), code=2).stderr
    azure = trained("--backend", "azureml", "metrics", code=2)
    assert "holds a local run, but the backend is now azureml" in azure.stderr  # metrics work on azureml too


def test_before_any_training(empty, scratch) -> None:
    assert "no MLflow store" in empty("metrics", code=2).stderr
    scratch("reset", "submit")
    result = scratch("metrics", code=2)
    assert "submit has not run" in result.stderr and "`ftctl submit`" in result.stderr
