"""A short calibration of a training job on this machine: a few optimizer steps through the trainer's
own code path (its tokenizer, data, model, LoRA, Trainer arguments and collator): a warm-up step, one
with its memory peak measured, then timed ones (at least the asked number, and on until they took a
couple of seconds, so a busy machine still gives undisturbed samples); and one evaluation pass, timed.

`python -m ftctl.backends.local.calibrate DIR` reads DIR/spec.json (a job spec, as `ftctl submit`
writes it, plus "calibration": {"steps": K}) and writes DIR/result.json:

  step_s        median seconds per optimizer step (the warm-up and the measured step left out)
  step_times    the steps' seconds: the warm-up, then the timed ones
  first_step_s  the first step's seconds (it warms up: lazy allocations, thread pools, kernels)
  fastest_step_s  the fastest warmed-up step (the least disturbed by other work on the machine)
  eval_s        seconds for one evaluation pass over the eval rows (null without an eval file)
  load_s        seconds to load the tokenizer, data and model
  peak_bytes    the memory peak of the measured step: on CUDA torch.cuda.max_memory_allocated();
                on the CPU the tensors alive when it starts (weights, optimizer state, buffers)
                plus the largest total that torch's profiler saw allocated during it
  peak_source   which of the two
  tensors       {"weights", "trainable", "optimizer"}: bytes of what was alive before the step

It runs in a process of its own, so the memory it takes (a GPU's cached blocks included) is given back
before the real job starts, and the peak is this job's alone. The job's files (model folders, MLflow)
are not written. Heavy imports happen inside functions only.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ftctl.errors import FtctlError


def _tensor_bytes(tensors: Any) -> int:
    return sum(int(t.numel()) * int(t.element_size()) for t in tensors)


def _state_bytes(model: Any, optimizer: Any) -> dict[str, int]:
    """Bytes of the tensors alive between two steps: weights (and buffers), the trainable ones among
    them, and the optimizer's state."""
    import torch

    params = list(model.parameters())
    optimizer_bytes = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            optimizer_bytes += _tensor_bytes(v for v in state.values() if torch.is_tensor(v))
    return {
        "weights": _tensor_bytes(params) + _tensor_bytes(model.buffers()),
        "trainable": _tensor_bytes(p for p in params if p.requires_grad),
        "optimizer": optimizer_bytes,
    }


class _CpuPeak:
    """The largest total of CPU tensor memory allocated while it runs, from torch's profiler (its
    allocation events carry the running total since the profiler started)."""

    def __init__(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.profiler: Any = profile(activities=[ProfilerActivity.CPU], profile_memory=True)

    def start(self) -> None:
        self.profiler.start()

    def stop(self) -> int:
        from torch._C._profiler import _EventType

        self.profiler.stop()
        peak = 0
        stack = list(self.profiler.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.tag == _EventType.Allocation and str(node.extra_fields.device) == "cpu":
                peak = max(peak, int(node.extra_fields.total_allocated))
        return peak


MIN_TIMED_S = 2.0  # keep stepping until the timed steps took this long (more samples on a busy machine)
MAX_EXTRA_STEPS = 100  # ...but at most this many steps beyond the asked ones


def _callback(device: str, steps: int) -> Any:
    """Step 1 warms up (timed on its own); step 2, when the optimizer state exists, is measured for
    memory; steps 3.. are timed: at least `steps` - 1 of them, and on until they took MIN_TIMED_S."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []  # step 1, then steps 3..
            self.last = time.perf_counter()
            self.peak: int | None = None
            self.before: dict[str, int] = {}
            self._cpu: _CpuPeak | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 1:  # the measured step begins
                self.before = _state_bytes(kwargs["model"], kwargs.get("optimizer"))
                if device == "cuda":
                    import torch

                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                else:
                    self._cpu = _CpuPeak()
                    self._cpu.start()
            else:
                self.last = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            if state.global_step == 2:
                if device == "cuda":
                    import torch

                    torch.cuda.synchronize()
                    self.peak = int(torch.cuda.max_memory_allocated())
                elif self._cpu is not None:
                    self.peak = self.before["weights"] + self.before["optimizer"] + self._cpu.stop()
                return
            self.times.append(now - self.last)
            timed = self.times[1:]
            if len(timed) >= max(1, steps - 1) and sum(timed) >= MIN_TIMED_S:
                control.should_training_stop = True

    return Timer()


def calibrate(spec: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """Time `steps` optimizer steps (plus one measured for memory) and one evaluation pass."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from ftctl.backends.local import trainer as tr

    hf_logging.disable_progress_bar()
    steps = int((spec.get("calibration") or {}).get("steps") or 3)
    started = time.perf_counter()
    job = tr._new_job(spec, work_dir, lambda event: None)
    amp = tr._amp_flags(job)
    model_path = tr._model_path(spec)
    set_seed(job.p.seed)
    tokenizer = tr.load_chat_tokenizer(model_path)
    data = tr._load_data(job, tokenizer)
    model = tr._load_model(job, model_path, amp)
    load_s = time.perf_counter() - started
    # The warm-up step, the measured one, the timed ones; no evaluation in between (timed on its own).
    # No checkpoints either: a calibration is timed, not kept.
    job.p = job.p.model_copy(
        update={
            "max_steps": steps + 1 + MAX_EXTRA_STEPS,
            "logging_steps": 10**6,
            "save_steps": 0,
            "save_minutes": None,
        }
    )
    train_only = tr._Data(data.train, data.dropped, [], data.rows)
    args = tr._training_arguments(job, train_only, amp)
    timer = _callback(job.device, steps)
    trainer = tr._make_trainer(job, model, tokenizer, args, train_only, [timer])
    with tr._quiet_checkpointing_deprecation():
        trainer.train()
    times = timer.times
    eval_s = None
    if data.eval:
        begin = time.perf_counter()
        trainer.evaluate(eval_dataset=data.eval)
        eval_s = time.perf_counter() - begin
    return {
        "steps": len(times),
        "step_times": [round(t, 4) for t in times],
        "step_s": statistics.median(times[1:] or times) if times else None,
        "first_step_s": times[0] if times else None,
        "fastest_step_s": min(times[1:] or times) if times else None,
        "eval_s": eval_s,
        "eval_rows": len(data.eval),
        "load_s": round(load_s, 3),
        "peak_bytes": timer.peak,
        "peak_source": "torch.cuda.max_memory_allocated"
        if job.device == "cuda"
        else "torch.profiler (CPU tensor allocations)",
        "tensors": timer.before,
        "device": job.device,
        "rows": len(data.rows),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ftctl.backends.local.calibrate DIR", file=sys.stderr)
        return 2
    work_dir = Path(args[0])
    try:
        spec = json.loads((work_dir / "spec.json").read_text(encoding="utf-8"))
        result = calibrate(spec, work_dir)
    except FtctlError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    tmp = work_dir / f".result.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, work_dir / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
