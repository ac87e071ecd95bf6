"""The local backend's plan: token statistics with the model's own tokenizer and chat template (the
trainer's tokenize function), the run's size, the memory estimate against this machine's device, and a
time estimate from a short calibration (calibrate.py), cached per model and settings.

`build_plan` serves `ftctl plan`; `preflight` is what `ftctl submit` runs before it starts a job: the
same plan without a new calibration (a cached one is used), refusing what cannot work (UsageError, exit
2) and warning about what likely goes wrong.

Caches live in <workspace>/plan/: token statistics per (split file, model, settings), calibrations per
(model, data, settings, device). Heavy imports happen inside functions only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import state as st
from ftctl.backends.local import procs
from ftctl.backends.local.backend import local
from ftctl.config import FinetuneSection
from ftctl.data.chat_tokens import load_chat_tokenizer, measure_conversations
from ftctl.errors import UsageError
from ftctl.plan import (
    CheckpointDisk,
    GiB,
    MemoryEstimate,
    MemorySetup,
    ModelShape,
    Plan,
    RunSize,
    SplitStats,
    TimeEstimate,
    cached_split,
    check,
    estimate_memory,
    packed_rows,
    submit_check,
)
from ftctl.records import CheckComputeOutputs, StateView
from ftctl.stages.contract import StageCall
from ftctl.stages.shared import finetune_params, prepared_files

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import State

NEEDS = ("pick-model", "check-compute", "prepare-data")
STATS_VERSION = 2
CALIBRATION_VERSION = 2
CALIBRATE_MODULE = "ftctl.backends.local.calibrate"


def plan_dir(ctx: Context) -> Path:
    return ctx.workspace / "plan"


def _require_upstream(state: State, command: str) -> None:
    for name in NEEDS:
        status = st.record(state, name)["status"]
        if status != st.SUCCEEDED:
            raise UsageError(
                f"{command} needs {name}, which is {status}",
                hint="run `ftctl run --to prepare-data` first",
            )


def job_settings(ctx: Context, state: State) -> tuple[dict[str, Any], list[str]]:
    """The finetune parameters submit would use (model defaults applied, precision resolved)."""
    recorded = StateView(state)
    params, notes = finetune_params(ctx, recorded)
    if params["precision"] == "auto":
        params["precision"] = recorded.check_compute.precision or "32"
    return params, notes


# --- token statistics ------------------------------------------------------------------------------


class _Stats:
    """The token statistics of the splits (cached), and the training rows they make."""

    def __init__(self, ctx: Context, model_dir: Path, model_hash: str, params: dict[str, Any]) -> None:
        self.ctx = ctx
        self.model_dir = model_dir
        self.model_hash = model_hash
        self.params = params
        self._tokenizer: Any = None

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            self._tokenizer = load_chat_tokenizer(self.model_dir)
        return self._tokenizer

    def split(self, split: str, path: Path, train: bool) -> tuple[SplitStats, int | None]:
        """(the split's statistics, its training rows when `train`)."""
        seq, limit = int(self.params["max_seq_length"]), self.ctx.cfg.plan.sample_rows
        key = st.digest(
            {
                "v": STATS_VERSION,
                "file": st.file_signature(path),
                "model": self.model_hash,
                "seq": seq,
                "limit": limit,
                "packing": self.params["packing"],
                "seed": self.params["seed"],
            }
        )
        return cached_split(
            plan_dir(self.ctx) / f"tokens-{split}-{key}.json", lambda: self._measure(split, path, train)
        )

    def _measure(self, split: str, path: Path, train: bool) -> tuple[SplitStats, int | None]:
        from ftctl.backends.local.evaluate import stop_token_ids

        seq, limit = int(self.params["max_seq_length"]), self.ctx.cfg.plan.sample_rows
        tokenizer = self.tokenizer()
        stop = frozenset(stop_token_ids(tokenizer, self.model_dir))
        total, convs = measure_conversations(tokenizer, path, seq, limit, stop)
        stats = SplitStats.build(split, str(path), total, convs, seq)
        rows = None
        if train:
            kept = [min(c.tokens, seq) for c in convs if c.assistant_kept]
            rows = packed_rows(kept, seq, int(self.params["seed"])) if self.params["packing"] else len(kept)
            if stats.estimated and convs:
                rows = round(rows * total / len(convs))
        return stats, rows


# --- the model's shape -----------------------------------------------------------------------------


def model_shape(model_dir: Path, parameters: int | None) -> ModelShape:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{model_dir}/config.json: cannot read it ({exc})") from None
    return ModelShape.from_config(config, parameters)


def trainable_parameters(shape: ModelShape, model_dir: Path, params: dict[str, Any]) -> int:
    """LoRA's parameters for the trainer's target modules (all parameters for a full fine-tune):
    counted from the shapes, or on a weightless (meta-device) copy of the model for other modules."""
    if not params["apply_lora"]:
        return shape.parameters
    from ftctl.backends.local.trainer import PHI3_LORA_TARGETS

    targets = params.get("lora_target_modules")
    if not targets and shape.model_type == "phi3":
        targets = PHI3_LORA_TARGETS
    counted = shape.lora_parameters(int(params["lora_r"]), targets or [])
    if counted is not None:
        return counted
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftctl.backends.local import trainer as tr

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    wrapped = tr._with_lora(model, FinetuneSection.model_validate(params))
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def _device_limit(compute: CheckComputeOutputs) -> tuple[int | None, str]:
    if compute.device == "cuda":
        gpus = compute.gpus or []
        if gpus and gpus[0].get("memory_gib"):
            return int(float(gpus[0]["memory_gib"]) * GiB), f"{gpus[0].get('name')} (per GPU)"
        return None, "the GPU (memory unknown)"
    ram = compute.ram_gib
    return (int(float(ram) * GiB), "this machine's RAM") if ram else (None, "RAM (unknown)")


# --- calibration -----------------------------------------------------------------------------------


def _calibration_key(ctx: Context, state: State, params: dict[str, Any], train: Path) -> str:
    recorded = StateView(state)
    compute = recorded.check_compute
    return st.digest(
        {
            "v": CALIBRATION_VERSION,
            "model": recorded.pick_model.content_hash,
            "params": params,
            "train": st.file_signature(train),
            "device": compute.device,
            "size": compute.size,
            "steps": ctx.cfg.plan.calibration_steps,
        }
    )


def cached_calibration(ctx: Context, key: str) -> dict[str, Any] | None:
    result = plan_dir(ctx) / f"calibration-{key}" / "result.json"
    if result.is_file():
        try:
            data = json.loads(result.read_text(encoding="utf-8"))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
    return None


def _subset(train: Path, dest: Path, rows_needed: int, per_row: float) -> Path:
    """The first conversations of the training file, enough for the calibration's steps."""
    wanted = max(rows_needed, int(rows_needed * per_row * 1.5) + 1)
    with train.open(encoding="utf-8") as src, dest.open("w", encoding="utf-8") as out:
        for n, line in enumerate(src):
            if n >= wanted:
                break
            out.write(line)
    return dest


def run_calibration(
    ctx: Context, key: str, spec: dict[str, Any], train: Path, rows_needed: int, per_row: float
) -> dict[str, Any]:
    """Run calibrate.py in a process of its own; its result (or {"error": ...})."""
    work = plan_dir(ctx) / f"calibration-{key}"
    work.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "train_file": str(_subset(train, work / "train.jsonl", rows_needed, per_row))}
    st.atomic_write_text(work / "spec.json", json.dumps(spec, indent=2) + "\n")
    log = work / "log.txt"
    steps = spec["calibration"]["steps"]
    with (
        ctx.ui.spinner(f"calibrating: timing {steps}+ optimizer steps on this machine"),
        log.open("wb") as out,
    ):
        returncode = procs.run(procs.python_command(CALIBRATE_MODULE, str(work)), out)
    result = cached_calibration(ctx, key)
    if returncode != 0 or result is None:
        text = log.read_text(encoding="utf-8", errors="replace")
        oom = "out of memory" in text.lower() or "outofmemory" in text.lower()
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["(no output)"]
        return {"error": "out of memory" if oom else last[0][:300], "oom": oom, "log": str(log)}
    return result


# --- the plan --------------------------------------------------------------------------------------


def build_plan(ctx: Context, state: State, calibrate: bool, command: str = "ftctl plan") -> Plan:
    """The plan of the job `ftctl submit` would start now."""
    from ftctl.models.layout import resolve_hf_dir

    _require_upstream(state, command)
    recorded = StateView(state)
    model, compute = recorded.pick_model, recorded.check_compute
    params, notes = job_settings(ctx, state)
    model_dir = resolve_hf_dir(Path(model.need("path")))
    files = prepared_files(state)
    data = ctx.cfg.data
    stats = _Stats(ctx, model_dir, str(model.content_hash), params)
    splits, rows = [], None
    for split, train in ((data.train_split, True), (data.test_split, False)):
        if split in files:
            found, split_rows = stats.split(split, Path(files[split]["path"]), train)
            splits.append(found)
            rows = split_rows if train else rows
    shape = model_shape(model_dir, model.parameters)
    trainable = trainable_parameters(shape, model_dir, params)
    settings = {
        "max_seq_length": params["max_seq_length"],
        "packing": params["packing"],
        "precision": params["precision"],
        "device": compute.device or "cpu",
        "lora": params["apply_lora"],
        "lora_r": params["lora_r"],
        "per_device_train_batch_size": params["per_device_train_batch_size"],
        "gradient_accumulation_steps": params["gradient_accumulation_steps"],
    }
    plan = Plan(
        backend="local",
        model={
            "name": model.name,
            "parameters": shape.parameters,
            "context_length": model.context_length or shape.context_length,
            "trainable": trainable,
        },
        settings=settings,
        splits=splits,
        run=None,
        memory=None,
        time=None,
        tokens_source="the model's tokenizer and chat template, as the trainer tokenizes",
        notes=list(notes),
    )
    train_stats = plan.split(data.train_split)
    if train_stats is not None and rows is not None:
        plan.run = _run_size(params, compute, train_stats, rows, data.test_split in files)
        plan.memory = _memory(shape, params, compute, trainable, plan)
        plan.time = _time(ctx, state, params, plan, calibrate)
        plan.checkpoints = _checkpoint_disk(ctx, params, model_dir, shape, trainable, plan.run.steps)
    plan.findings = check(plan, data.train_split)
    return plan


def _checkpoint_disk(
    ctx: Context, params: dict[str, Any], model_dir: Path, shape: ModelShape, trainable: int, steps: int
) -> CheckpointDisk:
    """The disk the job's checkpoints take at most, and what the workspace's file system has free."""
    import shutil

    from ftctl.backends.local import checkpoints

    kept = checkpoints.checkpoint_count(
        params.get("save_steps"), steps, int(params["save_total_limit"]), str(params.get("select") or "last")
    )
    if params.get("save_minutes") and kept == 0:  # by time only: as many as the limit (at least one)
        kept = max(1, int(params["save_total_limit"]))
    tokenizer = checkpoints.tokenizer_bytes(model_dir)
    each = checkpoints.checkpoint_bytes(trainable, shape.parameters, bool(params["apply_lora"]), tokenizer)
    folder = local(ctx).jobs_dir
    probe = folder if folder.exists() else local(ctx).root
    try:
        free: int | None = shutil.disk_usage(probe).free
    except OSError:
        free = None
    return CheckpointDisk(
        every_steps=checkpoints.save_interval(params.get("save_steps"), steps),
        kept=kept,
        each_bytes=each,
        total_bytes=kept * each,
        free_bytes=free,
        folder=str(folder),
    )


def _run_size(
    params: dict[str, Any], compute: CheckComputeOutputs, train: SplitStats, rows: int, has_eval: bool
) -> RunSize:
    devices = max(1, compute.gpus_per_node or 0)
    return RunSize.build(params, rows, devices, train, bool(params["packing"]), evals=has_eval)


def _memory(
    shape: ModelShape, params: dict[str, Any], compute: CheckComputeOutputs, trainable: int, plan: Plan
) -> MemoryEstimate:
    train = plan.splits[0]
    seq = (
        int(params["max_seq_length"]) if params["packing"] else min(int(params["max_seq_length"]), train.max)
    )
    devices = max(1, compute.gpus_per_node or 0)
    setup = MemorySetup(
        device=compute.device or "cpu",
        precision=str(params["precision"]),
        batch=int(params["per_device_train_batch_size"]),
        seq=seq,
        lora=bool(params["apply_lora"]),
        trainable=trainable,
        devices=devices,
        zero_stage=int(params["deepspeed_stage"]) if params["apply_deepspeed"] and devices > 1 else None,
        data_tokens=sum(s.tokens for s in plan.splits),
    )
    limit, source = _device_limit(compute)
    return estimate_memory(shape, setup, limit, source)


def _time(
    ctx: Context, state: State, params: dict[str, Any], plan: Plan, calibrate: bool
) -> TimeEstimate | None:
    """From the calibration cached for these settings, or a new one when `calibrate`."""
    assert plan.run is not None and plan.memory is not None
    recorded = StateView(state)
    train = Path(prepared_files(state)[ctx.cfg.data.train_split]["path"])
    key = _calibration_key(ctx, state, params, train)
    result = cached_calibration(ctx, key)
    source = "calibrated on this machine earlier (cached)"
    if result is None and calibrate:
        run = plan.run
        stats = plan.splits[0]
        per_row = (int(params["max_seq_length"]) / max(1, stats.p50)) if params["packing"] else 1.0
        steps = ctx.cfg.plan.calibration_steps
        spec = {
            "model_path": recorded.pick_model.need("path"),
            "eval_file": _eval_file(ctx, state),
            "params": params,
            "device": recorded.check_compute.device or "cpu",
            "calibration": {"steps": steps},
        }
        result = run_calibration(
            ctx, key, spec, train, (steps + 2) * run.per_device_batch * run.accumulation, per_row
        )
        source = f"calibrated on this machine: {result.get('steps', steps) if result else steps} steps timed"
    if result is None:
        return None
    if result.get("error"):
        if result.get("oom"):
            plan.memory.verdict = "oom"
            plan.notes.append(f"the calibration ran out of memory (log: {result.get('log')})")
        else:
            plan.notes.append(f"the calibration failed: {result['error']} (log: {result.get('log')})")
        return None
    if result.get("peak_bytes"):
        plan.memory.measured_bytes = int(result["peak_bytes"])
        plan.memory.measured_source = str(result.get("peak_source"))
    logged = -(-plan.run.steps // max(1, int(params["logging_steps"])))
    return TimeEstimate.build(result, plan.run.steps, plan.run.evals, logged, source)


def _eval_file(ctx: Context, state: State) -> str | None:
    files = prepared_files(state)
    split = ctx.cfg.data.test_split
    return str(files[split]["path"]) if split in files else None


# --- submit's check --------------------------------------------------------------------------------


def preflight(ctx: Context, call: StageCall) -> Plan:
    """What `ftctl submit` checks before it starts a job (ftctl.plan.submit_check): the plan without a
    new calibration (a cached one is used)."""
    plan = build_plan(ctx, call.state, calibrate=False, command="submit")
    submit_check(ctx.ui, plan)
    return plan
