"""The plan's estimates, checked against measurements on this machine (the figures are in
bench/README.md): the memory estimate against torch's measured peak on the CPU for the tiny model, and
the time estimate against the actual job."""

from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path

import pytest

from ftctl.plan import MEMORY_TOLERANCE

# The calibration's step time against the job's: the fastest steps of each, the least disturbed by
# other work on a shared machine (bursts of load from other processes slow single steps several-fold).
# The whole training time (warm-up, evaluations, logging) within a factor. Both only when the machine
# was not busier than its cores during the job (else printed, not compared): on a 2-core machine shared
# with other test runs the fastest step was 82% off the calibration's.
STEP_TOLERANCE = 0.5  # the job's fastest step within +-50% of the calibration's
RUNTIME_FACTOR = 2.0  # the job's train_runtime_s within a factor 2 of the estimate


@pytest.mark.parametrize(
    "settings",
    [
        {"per_device_train_batch_size": 8, "max_seq_length": 256},  # the quickstart's
        {"per_device_train_batch_size": 2, "max_seq_length": 512},
        {"per_device_train_batch_size": 4, "max_seq_length": 128, "apply_lora": False},  # full fine-tune
    ],
    ids=["lora-8x256", "lora-2x512", "full-4x128"],
)
def test_memory_estimate_against_torch_peak(scratch, settings: dict) -> None:
    sets = [x for key, value in settings.items() for x in ("--set", f"finetune.{key}={json.dumps(value)}")]
    memory = scratch.json("plan", *sets)["memory"]
    measured, estimated = memory["measured_bytes"], memory["tensors_bytes"]
    assert measured and memory["measured_source"].startswith("torch.profiler")
    error = estimated / measured - 1
    print(
        f"{settings}: estimate {estimated / 2**20:.1f} MiB, "
        f"torch peak {measured / 2**20:.1f} MiB ({error:+.1%})"
    )
    assert abs(error) <= MEMORY_TOLERANCE


def _step_times(job_dir: Path) -> list[float]:
    events = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]
    progress = [e for e in events if e["type"] == "progress"]
    evals = {e["step"]: e["time"] for e in events if e["type"] == "eval"}
    times = []
    for before, after in zip(progress, progress[1:], strict=False):
        if after["step"] == before["step"] + 1 and before["step"] not in evals:
            times.append(after["time"] - before["time"])
    return times


def _calibrate(ws, sets: list[str], attempts: int) -> tuple[dict, float]:
    """The plan, and the fastest calibrated step over up to `attempts` calibrations: on a shared machine
    a burst of load can slow every step of one short calibration (timeit's rule: take the minimum)."""
    fastest = float("inf")
    for _ in range(attempts):
        for cached in (ws.workspace / "plan").glob("calibration-*"):
            shutil.rmtree(cached)
        plan = ws.json("plan", *sets)
        fastest = min(fastest, plan["time"]["fastest_step_s"])
        if plan["time"]["step_s"] <= 2 * fastest:  # steady: no burst
            break
    return plan, fastest


def test_time_estimate_against_the_job(scratch) -> None:
    sets = ["--set", "finetune.max_steps=16"]
    plan, fastest = _calibrate(scratch, sets, attempts=3)
    estimate = plan["time"]
    scratch("submit", *sets)
    load = os.getloadavg()[0]
    job_dir = Path(scratch.outputs("submit")["job_dir"])
    result = json.loads((job_dir / "result.json").read_text())
    assert result["steps"] == plan["run"]["steps"] == 16
    events = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]
    assert sum(e["type"] == "eval" for e in events) == plan["run"]["evals"]
    steps = _step_times(job_dir)
    runtime = result["train_runtime_s"]
    print(
        f"step: calibrated {estimate['step_s']:.3f} s (fastest {fastest:.3f} s), job median "
        f"{statistics.median(steps):.3f} s (fastest {min(steps):.3f} s); training: estimated "
        f"{estimate['train_s']:.1f} s, job {runtime:.1f} s; load average {load:.1f} on {os.cpu_count()} cores"
    )
    if load <= (os.cpu_count() or 1):  # else printed, not compared: see STEP_TOLERANCE
        assert abs(min(steps) / fastest - 1) <= STEP_TOLERANCE
        assert 1 / RUNTIME_FACTOR <= runtime / estimate["train_s"] <= RUNTIME_FACTOR
