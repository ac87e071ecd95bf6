"""The local fine-tuning job: LoRA (peft) or full fine-tuning with the plain transformers Trainer.

`train(spec, job_dir, on_event)` runs one job in-process. `python -m ftctl.backends.local.trainer JOB_DIR
[--deepspeed-stage S]` reads JOB_DIR/spec.json, appends events to JOB_DIR/events.jsonl (one JSON object
a line, each with a "time"), prints one log line per event, and writes the result to
JOB_DIR/result.json (atomically); it exits 0, or 1 on a run-time failure / 2 on bad input (the message
on stderr, and an "error" event). Under a multi-process launch (torchrun, see launch.py) every rank
trains, and only rank 0 writes events, the result, the model folders and the MLflow run.

The spec's "params" are the `finetune` config section: validated by ftctl.config.FinetuneSection, whose
defaults (the quickstart's) fill what a spec leaves out; an invalid or unknown parameter is bad input.

Outputs (job_dir/outputs):
  hf_model/      the complete (merged) Hugging Face model + tokenizer
  mlflow_model/  an MLflow pyfunc model folder (MLmodel; the HF folder under artifacts/hf_model)
  adapter/       the LoRA adapter as trained (LoRA runs only)

Events (dicts passed to on_event), by "type":
  start     train_examples, dropped_examples, eval_examples, max_steps, device, apply_lora, trainable_params
  progress  step, max_steps, epoch, loss, learning_rate, tokens_per_second
  eval      step, max_steps, eval_loss, perplexity (before training, a few times during it, at the end)
  warning   message
  done      the result dict's fields
  error     message, error_type, hint (written by the entry point when the job fails)

Heavy imports (torch, transformers, peft, mlflow) happen inside functions only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import typing
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pydantic import ValidationError

from ftctl import collector, threads
from ftctl.backends.local import checkpoints
from ftctl.backends.local.checkpoints import Checkpoint
from ftctl.config import FinetuneSection
from ftctl.data.chat_tokens import (
    IGNORE_INDEX,
    load_chat_tokenizer,
    read_conversations,
    tokenize_conversation,
)
from ftctl.errors import DataError, FtctlError, UsageError
from ftctl.plan import PHI3_LINEAR, eval_every, pack_order, planned_steps

PHI3_LORA_TARGETS = list(PHI3_LINEAR)

# The fine-tuning defaults are the config's (FinetuneSection): the values a parameter takes when the
# job spec leaves it out. One set, shared with `ftctl run` and configs/local-quickstart.yaml.
DEFAULT_PARAMS: dict[str, Any] = FinetuneSection().model_dump()

Event = dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def load_examples(tokenizer: Any, path: Path, max_seq_length: int, limit: int = -1) -> tuple[list[dict], int]:
    """Tokenise a jsonl file; returns (examples, dropped) where dropped have no trainable token."""
    examples: list[dict] = []
    dropped = 0
    for lineno, messages in read_conversations(path):
        if 0 <= limit <= len(examples):
            break
        try:
            tokenized = tokenize_conversation(tokenizer, messages, max_seq_length)
        except Exception as exc:  # noqa: BLE001 - template errors (unknown role...) name the line
            raise DataError(f"{path}:{lineno}: cannot render with the chat template: {exc}") from None
        if tokenized is None:
            dropped += 1
            continue
        examples.append({"input_ids": tokenized[0], "labels": tokenized[1]})
    return examples, dropped


class PadCollator:
    """Pad a batch to its longest example: input_ids with pad_id, labels with -100."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        longest = max(len(x["input_ids"]) for x in batch)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        ids, labels, mask = [], [], []
        for x in batch:
            n = len(x["input_ids"])
            pad = longest - n
            ids.append(list(x["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(x["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * n + [0] * pad)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
        }


def pack_examples(examples: list[dict], max_len: int, seed: int) -> list[dict]:
    """Concatenate tokenized conversations into rows of at most `max_len` tokens.

    Each conversation keeps its own position ids (0, 1, 2, ... restarting at every conversation);
    with no attention mask, transformers builds a block-diagonal causal mask from those, so no token
    attends to another conversation. A conversation's first token is never a label (it is template),
    so no loss crosses a boundary either. Rows are filled in a seeded random order (next fit).
    """
    rows: list[dict] = []
    for group in pack_order([len(e["input_ids"]) for e in examples], max_len, seed):
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for index in group:
            example = examples[index]
            ids += example["input_ids"]
            labels += [IGNORE_INDEX, *list(example["labels"])[1:]]
            positions += range(len(example["input_ids"]))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return rows


class PackedCollator:
    """Pad packed rows to the longest: the padding is a segment of its own (positions from 0), with
    no labels; no attention_mask and no cache, so the model separates the conversations by their
    position ids."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        longest = max(len(x["input_ids"]) for x in batch)
        ids, labels, positions = [], [], []
        for x in batch:
            pad = longest - len(x["input_ids"])
            ids.append(list(x["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(x["labels"]) + [IGNORE_INDEX] * pad)
            positions.append(list(x["position_ids"]) + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            # transformers only derives the per-conversation mask from position ids when no KV cache
            # is built; with one, every token would attend to the conversations before it in the row.
            "use_cache": False,
        }


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _nullable(field: str) -> bool:
    """Whether the config lets `field` be null (a meaningful value, not "use the default")."""
    info = FinetuneSection.model_fields.get(field)
    return info is not None and type(None) in typing.get_args(info.annotation)


def _params(spec: dict) -> FinetuneSection:
    """The job's fine-tuning parameters: spec["params"] validated by the config model, whose defaults
    fill what the spec leaves out (or sets to null, where null is not a value of its own)."""
    given = {k: v for k, v in (spec.get("params") or {}).items() if v is not None or _nullable(k)}
    if given.get("precision") is not None:
        given["precision"] = str(given["precision"])
    targets = given.get("lora_target_modules")
    if isinstance(targets, str):
        given["lora_target_modules"] = [t.strip() for t in targets.split(",") if t.strip()]
    try:
        return FinetuneSection.model_validate(given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"])
            problem = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
            if err["type"] != "extra_forbidden" and "input" in err:
                problem += f" (got {err['input']!r})"
            problems.append(f"params.{where}: {problem}")
        raise UsageError("invalid job spec: " + "; ".join(problems)) from None


def _precision(p: FinetuneSection, device: str) -> str:
    """32, 16 or bf16: "auto" is bf16 on GPUs that support it, else 16 on a GPU, 32 on the CPU (as
    check-compute resolves it for a submitted job)."""
    if p.precision != "auto":
        return p.precision
    if device != "cuda":
        return "32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "16"


def _flat_params(params: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        if isinstance(v, (list, tuple)):
            v = ",".join(map(str, v))
        out[k] = "null" if v is None else str(v)[:500]
    return out


def _default_artifact_location(tracking_uri: str) -> str | None:
    """For a sqlite store, keep run artifacts next to the database (MLflow defaults to ./mlruns)."""
    for prefix, encoded in (("sqlite:///", False), ("sqlite+pysqlite:///", True)):  # see LocalWorkspace
        if tracking_uri.startswith(prefix):
            raw = tracking_uri[len(prefix) :]
            db = Path(unquote(raw) if encoded else raw)
            return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def _start_mlflow_run(cfg: dict, run_id: str | None = None) -> Any:
    """The job's MLflow run: a new one, or the one an interrupted attempt of the job started (`run_id`)."""
    import mlflow

    uri = cfg.get("tracking_uri")
    if uri:
        mlflow.set_tracking_uri(uri)
    name = cfg.get("experiment") or "ftctl"
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = cfg.get("artifact_location") or (_default_artifact_location(uri) if uri else None)
        try:
            exp_id = client.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - created concurrently by another job
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    if run_id:
        with contextlib.suppress(Exception):  # gone (a reset store): a new run
            return mlflow.start_run(run_id=run_id)
    return mlflow.start_run(experiment_id=exp_id, run_name=cfg.get("run_name"))


class TrainingDiverged(FtctlError):
    """The loss became NaN or infinite: the job stops (and nothing of it gets registered)."""


def _check_finite(logs: dict | None, step: int) -> None:
    for key in ("loss", "eval_loss"):
        value = (logs or {}).get(key)
        if value is not None and not math.isfinite(float(value)):
            raise TrainingDiverged(
                f"training diverged: {key} is {float(value)} at step {step}",
                hint="lower finetune.learning_rate (or check the data)",
            )


def _make_callback(emit: Callable[[Event], None], log_metrics: Callable[[dict, int], None]) -> Any:
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        """Turns the Trainer's logs into progress events and MLflow metrics (rank 0 only)."""

        def __init__(self) -> None:
            self.last_time = time.perf_counter()
            self.last_tokens = 0
            self.last_eval: dict[str, Any] | None = None  # the latest eval event

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time = time.perf_counter()
            self.last_tokens = state.num_input_tokens_seen or 0

        def on_step_end(self, args, state, control, **kwargs):
            changed = threads.adapt()  # other processes' load moved: torch's thread count follows it
            if changed is not None and state.is_world_process_zero:
                emit({"type": "phase", "message": f"step {state.global_step}: {changed.describe()}"})
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_log = True  # always report the last step
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "eval_loss" in logs:
                _check_finite(logs, state.global_step)
                eval_loss = float(logs["eval_loss"])
                self.last_eval = {
                    "type": "eval",
                    "step": state.global_step,
                    "max_steps": state.max_steps,
                    "eval_loss": eval_loss,
                    "perplexity": math.exp(eval_loss) if eval_loss < 700 else float("inf"),
                }
                self.last_time += float(logs.get("eval_runtime") or 0.0)  # not training time
                if state.is_world_process_zero:
                    emit(self.last_eval)
                    perplexity = min(self.last_eval["perplexity"], 1e30)
                    log_metrics({"eval_loss": eval_loss, "perplexity": perplexity}, state.global_step)
                return
            _check_finite(logs, state.global_step)  # every rank: they all stop together
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen or 0
            elapsed = now - self.last_time
            tps = (tokens - self.last_tokens) / elapsed if elapsed > 0 else 0.0
            self.last_time, self.last_tokens = now, tokens
            event = {
                "type": "progress",
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": round(float(state.epoch or 0.0), 4),
                "loss": float(logs["loss"]),
                "learning_rate": float(logs.get("learning_rate", 0.0)),
                "tokens_per_second": round(tps, 1),
            }
            emit(event)
            metrics = {k: event[k] for k in ("epoch", "loss", "learning_rate", "tokens_per_second")}
            log_metrics(metrics, state.global_step)

    return ProgressCallback()


@contextlib.contextmanager
def _quiet_checkpointing_deprecation() -> Iterator[None]:
    """transformers 5.x's Trainer and peft call the deprecated is_gradient_checkpointing: not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _from_pretrained_kwargs(dtype: Any) -> dict[str, Any]:
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


@dataclass
class _Job:
    """What every step of a training job reads: the spec, its validated parameters, where it runs."""

    spec: dict
    job_dir: Path
    p: FinetuneSection
    device: str  # cpu | cuda
    on_event: Callable[[Event], None]
    ds_stage: int | None  # DeepSpeed ZeRO stage, under a multi-process launch only
    resume: Checkpoint | None = None  # the checkpoint an earlier attempt of this job left

    @property
    def checkpoints(self) -> Path:
        return self.job_dir / "checkpoints"

    @property
    def is_main(self) -> bool:
        return _rank() == 0

    @property
    def use_deepspeed(self) -> bool:
        return self.ds_stage is not None

    @property
    def outputs(self) -> Path:
        return self.job_dir / "outputs"

    def emit(self, event: Event) -> None:
        """Pass an event on; only rank 0 reports."""
        if self.is_main:
            self.on_event(event)


@dataclass
class _Data:
    """The tokenized conversations and the rows training sees (packed or one conversation a row)."""

    train: list[dict]
    dropped: int  # training conversations with no trainable token
    eval: list[dict]
    rows: list[dict]


@dataclass
class _Fitted:
    """What training and the final evaluation measured."""

    steps: int
    train_loss: float
    train_tokens: int
    runtime: float
    eval_loss: float | None
    perplexity: float | None


def train(spec: dict, job_dir: Path, on_event: Callable[[Event], None]) -> dict[str, Any]:
    """Run one fine-tuning job described by spec; return the result dict (see the module docstring)."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading/saving bars; progress is reported through on_event
    job = _new_job(spec, Path(job_dir), on_event)
    job.resume = _resume_point(job)
    amp = _amp_flags(job)
    model_path = _model_path(spec)
    set_seed(job.p.seed)
    tokenizer = load_chat_tokenizer(model_path)
    data = _load_data(job, tokenizer)
    model = _load_model(job, model_path, amp)
    args = _training_arguments(job, data, amp)
    with _mlflow_run(job, model_path) as run:
        result = _train_and_save(job, model, tokenizer, args, data, run)
    job.emit({"type": "done", **result})
    return result


def _resume_point(job: _Job) -> Checkpoint | None:
    """The newest intact checkpoint an earlier attempt of this job saved (newer, damaged or partial
    ones are passed over, with a warning, and removed: this run saves them again)."""
    found, skipped = checkpoints.resume_point(job.checkpoints)
    for line in skipped:
        job.emit({"type": "warning", "message": f"passed over checkpoint {line}"})
    if found is not None and job.is_main:
        checkpoints.discard_after(job.checkpoints, found.step)
    return found


def _new_job(spec: dict, job_dir: Path, on_event: Callable[[Event], None]) -> _Job:
    p = _params(spec)
    return _Job(spec, job_dir, p, _device(spec), on_event, _deepspeed_stage(spec))


def _device(spec: dict) -> str:
    """cpu or cuda, as the spec says; cuda only where torch sees a CUDA device."""
    import torch

    device = str(spec.get("device") or "cpu")
    if device not in {"cpu", "cuda"}:
        raise UsageError(f"device must be cpu or cuda (got {device!r})")
    if device == "cuda" and not torch.cuda.is_available():
        raise FtctlError("device is cuda but torch sees no CUDA device", hint="set the compute to cpu")
    return device


def _deepspeed_stage(spec: dict) -> int | None:
    """The ZeRO stage when this is a multi-process launch with DeepSpeed on (and installed), else None."""
    ds_stage = spec.get("deepspeed_stage")
    if _world_size() <= 1 or ds_stage is None:
        return None
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise FtctlError(
            "apply_deepspeed is on but DeepSpeed is not installed",
            hint="pip install deepspeed, or turn apply_deepspeed off",
        )
    return int(ds_stage)


def _amp_flags(job: _Job) -> tuple[bool, bool]:
    """The Trainer's (fp16, bf16) flags for the job's precision on its device."""
    precision = _precision(job.p, job.device)
    if job.device == "cuda":
        return precision == "16", precision == "bf16"
    if precision == "16":
        job.emit({"type": "warning", "message": "precision 16 is not supported on cpu: training in float32"})
    return False, precision == "bf16"


def _model_path(spec: dict) -> Path:
    """The Hugging Face folder of the model to fine-tune (the spec may name an MLflow model folder)."""
    from ftctl.models.layout import resolve_hf_dir

    for key in ("model_path", "train_file"):
        if not spec.get(key):
            raise UsageError(f"the job spec has no {key}")
    return resolve_hf_dir(Path(spec["model_path"]))


def _load_data(job: _Job, tokenizer: Any) -> _Data:
    spec, p = job.spec, job.p
    train_examples, dropped = load_examples(tokenizer, Path(spec["train_file"]), p.max_seq_length)
    if not train_examples:
        raise DataError(f"{spec['train_file']}: no conversation has an assistant reply to train on")
    eval_examples: list[dict] = []
    if spec.get("eval_file"):
        limit = -1 if p.max_eval_samples is None else p.max_eval_samples
        eval_examples, _ = load_examples(tokenizer, Path(spec["eval_file"]), p.max_seq_length, limit=limit)
    return _Data(train_examples, dropped, eval_examples, _train_rows(p, train_examples))


def _load_model(job: _Job, model_path: Path, amp: tuple[bool, bool]) -> Any:
    """The model to train: the base model, wrapped for LoRA when the job applies it."""
    import torch
    from transformers import AutoModelForCausalLM

    threads.apply()  # torch's thread count for this machine's cores and load (ftctl.threads)
    # Frozen base weights may stay in 16 bits on a GPU under LoRA; everything else trains in float32
    # (the Trainer's amp flags then do the mixed precision).
    fp16, bf16 = amp
    load_dtype = torch.float32
    if job.device == "cuda" and job.p.apply_lora and (fp16 or bf16):
        load_dtype = torch.bfloat16 if bf16 else torch.float16
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_path), **_from_pretrained_kwargs(load_dtype))
    model.config.use_cache = False  # no KV cache while training; turned back on before saving
    return _with_lora(model, job.p) if job.p.apply_lora else model


def _with_lora(model: Any, p: FinetuneSection) -> Any:
    from peft import LoraConfig, get_peft_model

    targets: list[str] | None = p.lora_target_modules
    if not targets:
        targets = PHI3_LORA_TARGETS if model.config.model_type == "phi3" else None
    lora = LoraConfig(
        r=p.lora_r,
        lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with _quiet_checkpointing_deprecation():
        return get_peft_model(model, lora)


def _deepspeed_config(job: _Job) -> dict | None:
    """The DeepSpeed config for the Trainer (None without DeepSpeed); rank 0 writes a copy."""
    if job.ds_stage is None:
        return None
    from ftctl.backends.local.launch import deepspeed_config, write_deepspeed_config

    if job.is_main:  # a copy for the record; the Trainer gets the dict
        job.job_dir.mkdir(parents=True, exist_ok=True)
        write_deepspeed_config(job.job_dir, job.ds_stage)
    return deepspeed_config(job.ds_stage)


def _training_arguments(job: _Job, data: _Data, amp: tuple[bool, bool]) -> Any:
    from transformers import TrainingArguments

    p, device = job.p, job.device
    args_kwargs: dict[str, Any] = dict(
        output_dir=str(job.job_dir / "checkpoints"),
        num_train_epochs=float(p.num_train_epochs),
        max_steps=p.max_steps,
        per_device_train_batch_size=p.per_device_train_batch_size,
        per_device_eval_batch_size=p.per_device_eval_batch_size,
        gradient_accumulation_steps=p.gradient_accumulation_steps,
        learning_rate=p.learning_rate,
        lr_scheduler_type=p.lr_scheduler_type,
        warmup_steps=p.warmup_steps,
        weight_decay=p.weight_decay,
        logging_steps=p.logging_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN/inf loss is logged as such: the job stops, "diverged"
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=p.seed,
        data_seed=p.seed,
        fp16=amp[0],
        bf16=amp[1],
        use_cpu=device == "cpu",
        remove_unused_columns=False,
        dataloader_pin_memory=device == "cuda",
        include_num_input_tokens_seen="non_padding",
        deepspeed=_deepspeed_config(job),
    )
    if _world_size() > 1 and not job.use_deepspeed:
        args_kwargs["ddp_find_unused_parameters"] = False  # every trainable weight is used each step
    planned = _planned_steps(p, len(data.rows))
    if data.eval:  # an eval curve: before training, about every quarter of it, and at the end
        every = eval_every(planned)
        args_kwargs.update(eval_strategy="steps", eval_steps=every, eval_on_start=job.resume is None)
    policy = checkpoints.policy_for(p, planned, bool(data.eval))
    # Saved by steps (the minutes are the checkpoint callback's); kept and rotated by ftctl, which seals
    # each checkpoint with its manifest first (the Trainer's own limit would count unsealed ones).
    every_steps = policy.every_steps or planned + 1
    args_kwargs.update(save_strategy="steps" if policy.enabled else "no", save_steps=every_steps)
    return TrainingArguments(**args_kwargs)


@contextlib.contextmanager
def _mlflow_run(job: _Job, model_path: Path) -> Iterator[Any]:
    """The job's MLflow run on rank 0 (None without one), ended FAILED when the job fails."""
    mlflow_cfg = job.spec.get("mlflow") or None
    if not (job.is_main and mlflow_cfg):
        yield None
        return
    import mlflow

    run_id = job.resume.mlflow_run_id if job.resume is not None else None
    run = _start_mlflow_run(mlflow_cfg, run_id)
    mlflow.log_params(
        _flat_params({**job.p.model_dump(), "model_path": str(model_path), "device": job.device})
    )
    try:
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


def _train_rows(p: FinetuneSection, train_examples: list[dict]) -> list[dict]:
    """The training rows: with `packing`, short conversations share rows of max_seq_length tokens
    (several times the tokens per step); else one conversation a row."""
    if not p.packing:
        return train_examples
    return pack_examples(train_examples, p.max_seq_length, p.seed)


class _TrainOrEvalCollator:
    """Packed rows for training, padded single conversations for evaluation (comparable eval loss)."""

    def __init__(self, packed: PackedCollator, padded: PadCollator) -> None:
        self.packed, self.padded = packed, padded

    def __call__(self, batch: list[dict]) -> dict:
        return self.packed(batch) if "position_ids" in batch[0] else self.padded(batch)


def _train_and_save(
    job: _Job, model: Any, tokenizer: Any, args: Any, data: _Data, run: Any
) -> dict[str, Any]:
    """Train with the Trainer `args` describe, evaluate, save the model folders, log to MLflow `run`."""
    trainable = sum(x.numel() for x in model.parameters() if x.requires_grad)
    callback = _make_callback(job.emit, _metric_logger(run))
    planned = _planned_steps(job.p, len(data.rows))
    saver = checkpoints.make_callback(
        checkpoints.policy_for(job.p, planned, bool(data.eval)),
        job.checkpoints,
        job.emit,
        lambda: callback.last_eval,
        lambda: run.info.run_id if run is not None else None,
    )
    trainer = _make_trainer(job, model, tokenizer, args, data, [callback, saver])
    _announce(job, data, planned, trainable)
    fitted = _fit(trainer, callback, data, job.resume)
    selected = _select(job, trainer, fitted)
    _save_trained(job, trainer)
    if not job.is_main:
        return {}
    with contextlib.suppress(OSError):
        job.checkpoints.rmdir()  # the Trainer's output_dir, when nothing was checkpointed there
    saved = _save_hf_model(job, trainer, tokenizer)
    model_dir = _save_mlflow_folder(job.outputs)
    result = {**_result(job, run, fitted, data, model_dir), **selected}
    stops = _stop_check(job, saved, tokenizer)
    del saved
    if stops is not None:
        result["stop_check"] = stops
    template = _template_check(job)
    if template is not None:
        result["template_check"] = template
    if run is not None:
        _log_final_metrics(result, data)
    return result


def _metric_logger(run: Any) -> Callable[[dict, int], None]:
    def log_metrics(metrics: dict, step: int) -> None:
        if run is not None:
            import mlflow

            mlflow.log_metrics(metrics, step=step)

    return log_metrics


def _make_trainer(job: _Job, model: Any, tokenizer: Any, args: Any, data: _Data, callbacks: list[Any]) -> Any:
    """The transformers Trainer, reporting through `callbacks` only (no progress printer)."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    pad_to = 8 if job.device == "cuda" else None
    collator: Any = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=pad_to)
    if job.p.packing:
        collator = _TrainOrEvalCollator(PackedCollator(tokenizer.pad_token_id), collator)
    with _quiet_checkpointing_deprecation():
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data.rows,
            eval_dataset=data.eval or None,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    trainer.remove_callback(PrinterCallback)  # progress goes through on_event instead
    return trainer


def _announce(job: _Job, data: _Data, max_steps: int, trainable: int) -> None:
    """The start event, and a warning for conversations dropped for want of a trainable token."""
    job.emit(
        {
            "type": "start",
            "train_examples": len(data.train),
            "dropped_examples": data.dropped,
            "eval_examples": len(data.eval),
            "max_steps": max_steps,
            "device": job.device,
            "apply_lora": job.p.apply_lora,
            "trainable_params": trainable,
            "threads": threads.apply().describe(),
        }
    )
    if job.resume is not None:
        job.emit({"type": "resume", "step": job.resume.step, "max_steps": job.resume.max_steps,
                  "checkpoint": str(job.resume.path)})  # fmt: skip
    if data.dropped:
        job.emit(
            {
                "type": "warning",
                "message": f"dropped {data.dropped} training conversation(s) with no assistant token "
                f"within max_seq_length={job.p.max_seq_length}",
            }
        )


def _fit(trainer: Any, callback: Any, data: _Data, resume: Checkpoint | None = None) -> _Fitted:
    """Train (from `resume`, an earlier attempt's checkpoint, when there is one), then evaluate at the
    last step unless the eval curve already did."""
    started = time.perf_counter()
    with _quiet_checkpointing_deprecation():
        train_output = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    runtime = time.perf_counter() - started
    steps = int(trainer.state.global_step)
    train_loss = float(train_output.training_loss)
    if resume is not None:  # the Trainer's mean covers this attempt's steps only
        train_loss = _logged_mean_loss(trainer.state.log_history, steps, train_loss)
    eval_loss = perplexity = None
    if data.eval:
        if callback.last_eval is None or callback.last_eval["step"] != steps:
            trainer.evaluate()  # the callback emits the event and logs the metrics
        if callback.last_eval is not None:
            eval_loss, perplexity = callback.last_eval["eval_loss"], callback.last_eval["perplexity"]
    return _Fitted(
        steps=steps,
        train_loss=train_loss,
        train_tokens=int(trainer.state.num_input_tokens_seen or 0),
        runtime=runtime,
        eval_loss=eval_loss,
        perplexity=perplexity,
    )


def _logged_mean_loss(history: list[dict], steps: int, fallback: float) -> float:
    """The mean training loss over all `steps`, from the logged losses (each the mean since the last
    log), as the Trainer restores them on resume; `fallback` when the log does not cover the run."""
    total, previous = 0.0, 0
    for entry in history:
        if "loss" in entry and "step" in entry and int(entry["step"]) > previous:
            total += float(entry["loss"]) * (int(entry["step"]) - previous)
            previous = int(entry["step"])
    return total / previous if previous == steps and steps > 0 else fallback


def _select(job: _Job, trainer: Any, fitted: _Fitted) -> dict[str, Any]:
    """`finetune.select`: keep the final weights (last), or load the checkpoint with the lowest held-out
    loss when it beats them (best). `fitted` then describes the selected model; returns what the result
    records of the choice."""
    chosen: dict[str, Any] = {"select": job.p.select, "final_eval_loss": fitted.eval_loss}
    last = {**chosen, "selected_step": fitted.steps, "selected_eval_loss": fitted.eval_loss}
    best = checkpoints.best(checkpoints.complete(job.checkpoints)) if job.p.select == "best" else None
    if best is None or best.eval_loss is None or best.step >= fitted.steps:
        return last
    if fitted.eval_loss is not None and best.eval_loss >= fitted.eval_loss:
        return last
    if job.use_deepspeed:
        job.emit(
            {"type": "warning", "message": "select: best is not supported with DeepSpeed: the last weights"}
        )
        return last
    checkpoints.load_weights(trainer.accelerator.unwrap_model(trainer.model), best, job.p.apply_lora)
    fitted.eval_loss = best.eval_loss
    fitted.perplexity = math.exp(best.eval_loss) if best.eval_loss < 700 else float("inf")
    job.emit({"type": "selected", "step": best.step, "max_steps": fitted.steps, "eval_loss": best.eval_loss})
    return {**chosen, "selected_step": best.step, "selected_eval_loss": best.eval_loss}


def _save_trained(job: _Job, trainer: Any) -> None:
    """Save what was trained (every rank: gathers ZeRO-3 shards): the adapter under LoRA, else the model."""
    base = trainer.accelerator.unwrap_model(trainer.model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    base.config.use_cache = True  # the saved model is for inference
    trainer.save_model(str(job.outputs / ("adapter" if job.p.apply_lora else "hf_model")))
    trainer.accelerator.wait_for_everyone()


def _save_hf_model(job: _Job, trainer: Any, tokenizer: Any) -> Any:
    """outputs/hf_model: the complete model (LoRA merged in) and the tokenizer (rank 0). Returns the model
    as saved, in memory (None under DeepSpeed, whose live weights are sharded)."""
    hf_dir = job.outputs / "hf_model"
    if job.p.apply_lora:
        if not job.p.merge_lora_weights:
            job.emit(
                {
                    "type": "warning",
                    "message": "merge_lora_weights is false: the adapter alone is in outputs/adapter; "
                    "outputs/hf_model holds the merged model the later stages need",
                }
            )
        merged = _merged_model(trainer, job.spec, job.outputs / "adapter", job.use_deepspeed)
        merged.save_pretrained(str(hf_dir))
    else:
        merged = trainer.accelerator.unwrap_model(trainer.model)
    tokenizer.save_pretrained(str(hf_dir))
    return None if job.use_deepspeed else merged


def _stop_check(job: _Job, model: Any, tokenizer: Any) -> dict[str, Any] | None:
    """submit's end-of-turn check (ftctl.backends.local.evaluate.held_out_stop_check) on the model just
    saved, while it is in memory: submit then need not load it again. None without a test split or a
    model in memory (submit checks the saved folder itself)."""
    eval_file = job.spec.get("eval_file")
    if model is None or not eval_file:
        return None
    from ftctl.backends.local.evaluate import held_out_stop_check

    job.emit({"type": "phase", "message": "checking that the fine-tuned model ends its turn"})
    model.eval()
    found = held_out_stop_check(model, tokenizer, job.outputs / "hf_model", Path(eval_file))
    return dataclasses.asdict(found)


def _template_check(job: _Job) -> dict[str, Any] | None:
    """deploy's chat-template check (ftctl.backends.local.evaluate.check_template) on the model just
    saved, while transformers is loaded here: deploy reuses it when it would check exactly the same
    files and conversations. None without a test split."""
    eval_file, base = job.spec.get("eval_file"), job.spec.get("model_path")
    if not eval_file or not base:
        return None
    from ftctl.backends.local.evaluate import trained_template_check

    job.emit({"type": "phase", "message": "checking the chat template the endpoint will use"})
    return trained_template_check(Path(base), job.outputs / "hf_model", Path(eval_file))


def _save_mlflow_folder(outputs: Path) -> Path:
    """outputs/mlflow_model, written afresh from outputs/hf_model."""
    from ftctl.backends.local.mlflow_model import save_mlflow_model

    model_dir = outputs / "mlflow_model"
    if model_dir.exists():
        import shutil

        shutil.rmtree(model_dir)
    save_mlflow_model(outputs / "hf_model", model_dir)
    return model_dir


def _result(job: _Job, run: Any, fitted: _Fitted, data: _Data, model_dir: Path) -> dict[str, Any]:
    runtime = fitted.runtime
    result: dict[str, Any] = {
        "mlflow_run_id": run.info.run_id if run is not None else None,
        "train_loss": fitted.train_loss,
        "eval_loss": fitted.eval_loss,
        "perplexity": fitted.perplexity,
        "train_tokens": fitted.train_tokens,
        "tokens_per_second": round(fitted.train_tokens / runtime if runtime > 0 else 0.0, 1),
        "train_runtime_s": round(runtime, 3),
        "steps": fitted.steps,
        "train_examples": len(data.train),
        "dropped_examples": data.dropped,
        "model_dir": str(model_dir),
        "hf_model_dir": str(job.outputs / "hf_model"),
    }
    if job.p.apply_lora:
        result["adapter_dir"] = str(job.outputs / "adapter")
    return result


def _log_final_metrics(result: dict[str, Any], data: _Data) -> None:
    """The run's final metrics (eval_loss and perplexity at the last step: logged by the callback
    already) and the MLflow model folder as an artifact."""
    import mlflow

    final = {k: result[k] for k in ("train_loss", "train_tokens", "tokens_per_second", "train_runtime_s")}
    final["dropped_examples"] = data.dropped
    final["train_examples"] = len(data.train)
    mlflow.log_metrics({k: float(v) for k, v in final.items()}, step=result["steps"])
    mlflow.log_artifacts(result["model_dir"], artifact_path="mlflow_model")


def _planned_steps(p: FinetuneSection, rows: int) -> int:
    """The run's optimizer steps, counted as the plan counts them (ftctl.plan.planned_steps)."""
    return planned_steps(
        rows,
        p.per_device_train_batch_size,
        p.gradient_accumulation_steps,
        _world_size(),
        p.num_train_epochs,
        p.max_steps,
    )


def _merged_model(trainer: Any, spec: dict, adapter_dir: Path, use_deepspeed: bool) -> Any:
    """The base model with the LoRA weights merged in, in float32 on the CPU-or-current device."""
    import torch

    if not use_deepspeed:
        model = trainer.accelerator.unwrap_model(trainer.model)
        merged = model.merge_and_unload()
        if merged.dtype != torch.float32 and str(spec.get("device")) == "cpu":
            merged = merged.to(torch.float32)
        return merged
    # ZeRO shards the live weights: rebuild from the saved adapter on the CPU, with the Trainer's
    # DeepSpeed config switched off (else from_pretrained would partition, a collective call on rank 0).
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    except ImportError:  # pragma: no cover - older transformers
        pass

    from ftctl.models.layout import resolve_hf_dir

    base = AutoModelForCausalLM.from_pretrained(
        str(resolve_hf_dir(Path(spec["model_path"]))), **_from_pretrained_kwargs(torch.float32)
    )
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


# --------------------------------------------------------------------------------------------------
# Job entry point: python -m ftctl.backends.local.trainer JOB_DIR
# --------------------------------------------------------------------------------------------------


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def describe_event(event: Event) -> str:
    """One human-readable log line for an event (the job's stdout)."""
    kind = event.get("type")
    if kind == "progress":
        return (
            f"step {event['step']}/{event['max_steps']} epoch {event['epoch']:.2f} "
            f"loss {event['loss']:.4f} lr {event['learning_rate']:.3g} "
            f"{event['tokens_per_second']:.0f} tokens/s"
        )
    if kind == "start":
        return (
            f"training on {event['train_examples']} conversations ({event['dropped_examples']} dropped), "
            f"{event['eval_examples']} for evaluation, {event['max_steps']} steps on {event['device']}, "
            f"{'LoRA' if event['apply_lora'] else 'full fine-tune'}: "
            f"{event['trainable_params']:,} trainable parameters"
            + (f"; {event['threads']}" if event.get("threads") else "")
        )
    if kind == "eval":
        return f"eval_loss {event['eval_loss']:.4f} perplexity {event['perplexity']:.2f}"
    if kind == "done":
        return (
            f"done: {event['steps']} steps in {event['train_runtime_s']:.1f}s, train_loss "
            f"{event['train_loss']:.4f}, {event['train_tokens']} tokens "
            f"({event['tokens_per_second']:.0f}/s), model at {event['model_dir']}"
        )
    if kind == "resume":
        return f"resumed from step {event['step']} of {event['max_steps']} ({event.get('checkpoint')})"
    if kind == "checkpoint":
        loss = event.get("eval_loss")
        return f"checkpoint at step {event['step']}" + ("" if loss is None else f" (eval_loss {loss:.4f})")
    if kind == "selected":
        return f"selected the checkpoint of step {event['step']} (eval_loss {event['eval_loss']:.4f}): best"
    if kind in ("warning", "error"):
        return f"{kind}: {event.get('message')}"
    if kind == "phase":
        return str(event.get("message"))
    return json.dumps(event, default=str)


def run_job(job_dir: Path, deepspeed_stage: int | None = None) -> dict[str, Any]:
    """Read job_dir/spec.json, train, append events to events.jsonl, write result.json (rank 0).

    deepspeed_stage (from the launch command) turns DeepSpeed ZeRO on under a multi-process launch.
    """
    job_dir = Path(job_dir)
    spec_path = job_dir / "spec.json"
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{spec_path}: cannot read the job spec ({exc})") from None
    if deepspeed_stage is not None:
        spec["deepspeed_stage"] = deepspeed_stage
    events_path = job_dir / "events.jsonl"
    is_main = _rank() == 0

    def on_event(event: Event) -> None:
        if not is_main:
            return
        record = {"time": round(time.time(), 3), **event}
        with events_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()
        print(describe_event(event), flush=True)

    try:
        result = train(spec, job_dir, on_event)
    except BaseException as exc:
        on_event(
            {
                "type": "error",
                "message": str(exc) or type(exc).__name__,
                "error_type": type(exc).__name__,
                "hint": getattr(exc, "hint", None),
                "expected": isinstance(exc, FtctlError),  # its message is the whole cause
            }
        )
        raise
    if is_main:
        _write_json_atomic(job_dir / "result.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ftctl.backends.local.trainer",
        description="Run the training job described by JOB_DIR/spec.json.",
    )
    parser.add_argument("job_dir", type=Path)
    parser.add_argument(
        "--deepspeed-stage",
        type=int,
        choices=(1, 2, 3),
        default=None,
        help="use DeepSpeed ZeRO at this stage (multi-process launches only)",
    )
    args = parser.parse_args(argv)
    collector.fewer_collections()  # started cold, it imports torch, transformers, MLflow (ftctl.collector)
    threads.begin()  # measures the machine's other load while the job loads (ftctl.threads)
    # OpenMP's wait policy is left to the user: passive waiting (OMP_WAIT_POLICY=PASSIVE) protects a
    # CPU shared with other busy processes, but on an idle 2-core machine it made training 1.8x slower
    # (4,800 -> 2,700 tokens/s on the tiny model), so ftctl keeps the default.
    try:
        run_job(args.job_dir, deepspeed_stage=args.deepspeed_stage)
    except FtctlError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
