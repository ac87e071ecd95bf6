"""The pre-flight plan: what `ftctl submit` will do, before it costs anything.

Backend-neutral: the records a plan is made of (token statistics per split, the run's size, a memory
estimate against the device, a time estimate), the arithmetic behind them, the findings that make
`submit` refuse or warn, and how a plan is shown. A backend measures what it can (the local backend
tokenizes with the model's own tokenizer and calibrates on this machine) and fills these in.

The memory model (`estimate_memory`) counts what training keeps in memory at its peak, for a decoder-only
transformer trained with AdamW:

  weights      every parameter, at the precision it is loaded in (16 bits for a frozen base under LoRA
               with mixed precision on a GPU, else 32)
  adapters     LoRA's A and B matrices (float32), when LoRA is on
  gradients    one float32 per trainable parameter
  optimizer    AdamW's two float32 moments per trainable parameter (ZeRO-2/3 shard them, and the
               gradients, across GPUs; ZeRO-3 the weights too)
  activations  what the forward pass saves for the backward, per token of a batch (batch x sequence):
               per layer ACT_HIDDEN x hidden + ACT_QKV x (q+k+v width) + ACT_MLP x intermediate
               + ACT_LAYER values, and ACT_VOCAB x vocabulary for the logits, their log-softmax and
               their gradient (kept in float32). The coefficients were fitted to torch's measured peaks
               of the trainer on the CPU for six Phi-3 shapes (bench/README.md): they count the saved
               tensors of transformers' Phi-3 layer with peft's LoRA. 16-bit training keeps the layer
               activations in 16 bits, the logits in 32. With gradient checkpointing only each
               layer's input is kept, plus one layer's activations while it is recomputed.
  runtime      what is not a tensor: the CUDA context on a GPU, the interpreter and libraries on the
               CPU; and, on the CPU, the tokenized data held as Python lists.

The estimate is checked against torch's measured peak (tests/quality/test_plan_estimates.py); the
stated tolerance is MEMORY_TOLERANCE.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftctl.ui import UI

# --- the memory model's coefficients (values kept per token; see the module docstring) ---------------
ACT_HIDDEN = 6.85
ACT_QKV = 1.32
ACT_MLP = 3.9
ACT_LAYER = 267.0
ACT_VOCAB = 2.93
FULL_FT_HIDDEN = 1.0  # a full fine-tune also keeps the normalised inputs for the norms' weight grads
CPU_RUNTIME_BYTES = 1 << 30  # the interpreter, torch and transformers
CUDA_RUNTIME_BYTES = 3 << 29  # the CUDA context and kernels (1.5 GiB), not in torch's own count
DATA_BYTES_PER_TOKEN = 70  # a tokenized conversation as Python lists (ids, labels, packed rows)
LOG_S = 0.02  # a logged step: the metrics go to the MLflow store (SQLite)

MEMORY_TOLERANCE = 0.15  # the estimate of torch's peak is within 15% on the CPU (bench/README.md)
DEFINITE_OOM = 1 / (1 - MEMORY_TOLERANCE)  # even the low end of the estimate does not fit
TIGHT = 0.9  # within 10% of the limit: warn
TRUNCATION_WARNING = 0.05  # warn when more than 5% of the assistant tokens are cut

# Every linear module of a Phi-3 decoder layer: the local trainer's LoRA targets, and the plan's
# assumption for Azure ML's (whose finetune step does not say which it adapts).
PHI3_LINEAR = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")

GiB = 1 << 30
MiB = 1 << 20


# --- token statistics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    """One conversation as the trainer sees it: its length in tokens with the chat template, its
    assistant (trained) tokens, and those left within max_seq_length."""

    tokens: int
    assistant: int
    assistant_kept: int
    ends_turn: bool = True  # the labels end a reply with a token the endpoint stops on


def percentile(values: Sequence[int], q: float) -> int:
    """The nearest-rank percentile of sorted `values` (0 when empty)."""
    if not values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(values)))
    return int(values[min(rank, len(values)) - 1])


@dataclass
class SplitStats:
    split: str
    path: str
    conversations: int  # in the file
    analysed: int  # tokenized: all, or an evenly spaced sample (plan.sample_rows)
    tokens: int  # whole file (scaled up from the sample when sampled)
    p50: int
    p90: int
    p99: int
    max: int
    assistant_tokens: int
    assistant_share: float  # of all tokens
    truncated: int  # conversations longer than max_seq_length
    assistant_tokens_lost: int  # assistant tokens past max_seq_length
    assistant_lost_share: float  # of the assistant tokens
    no_assistant: int  # conversations with no assistant token at all (the trainer drops them)
    dropped: int  # conversations with no assistant token left within max_seq_length (dropped too)
    tokens_kept: int = 0  # the tokens training reads: each kept conversation up to max_seq_length
    end_of_turn_labelled: int = 0  # conversations whose labels end a reply with an end-of-turn token
    estimated: bool = False  # counts scaled up from a sample

    @classmethod
    def build(
        cls, split: str, path: str, total: int, convs: Sequence[Conversation], max_seq_length: int
    ) -> SplitStats:
        scale = total / len(convs) if convs else 0.0
        lengths = sorted(c.tokens for c in convs)
        tokens = sum(lengths)
        assistant = sum(c.assistant for c in convs)
        lost = sum(c.assistant - c.assistant_kept for c in convs)

        def scaled(n: int) -> int:
            return round(n * scale)

        return cls(
            split=split,
            path=path,
            conversations=total,
            analysed=len(convs),
            tokens=scaled(tokens),
            p50=percentile(lengths, 50),
            p90=percentile(lengths, 90),
            p99=percentile(lengths, 99),
            max=lengths[-1] if lengths else 0,
            assistant_tokens=scaled(assistant),
            assistant_share=assistant / tokens if tokens else 0.0,
            truncated=scaled(sum(1 for c in convs if c.tokens > max_seq_length)),
            assistant_tokens_lost=scaled(lost),
            assistant_lost_share=lost / assistant if assistant else 0.0,
            no_assistant=scaled(sum(1 for c in convs if c.assistant == 0)),
            dropped=scaled(sum(1 for c in convs if c.assistant_kept == 0)),
            tokens_kept=scaled(sum(min(c.tokens, max_seq_length) for c in convs if c.assistant_kept)),
            end_of_turn_labelled=scaled(sum(1 for c in convs if c.assistant and c.ends_turn)),
            estimated=len(convs) < total,
        )


def cached_split(
    cache: Path, measure: Callable[[], tuple[SplitStats, int | None]]
) -> tuple[SplitStats, int | None]:
    """A split's statistics and training rows from `cache` (a plan/tokens-*.json file), or measured and
    written there; `measure`'s inputs are part of the file's name, so a cached file is never stale."""
    from ftctl import state as st

    if cache.is_file():
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            return SplitStats(**data["stats"]), data.get("rows")
        except (ValueError, TypeError, KeyError):  # damaged: measured again and rewritten below
            pass
    stats, rows = measure()
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.parent.is_symlink():
        return stats, rows  # not written through a link (nothing outside the workspace): measured again
    st.atomic_write_text(cache, json.dumps({"stats": stats.__dict__, "rows": rows}, indent=1) + "\n")
    return stats, rows


def sample_indices(total: int, limit: int | None) -> list[int]:
    """Which conversations to tokenize: all, or `limit` evenly spaced ones."""
    if limit is None or total <= limit:
        return list(range(total))
    return sorted({int(i * total / limit) for i in range(limit)})


def pack_order(lengths: Sequence[int], max_len: int, seed: int) -> list[list[int]]:
    """Which conversations share each packed row, given their (truncated) lengths: next fit in a seeded
    random order. The local trainer packs by it (ftctl.backends.local.trainer.pack_examples), and the
    plan counts rows by it, so both agree by construction."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    rows: list[list[int]] = []
    row: list[int] = []
    used = 0
    for index in order:
        n = lengths[index]
        if row and used + n > max_len:
            rows.append(row)
            row, used = [], 0
        row.append(index)
        used += n
    if row:
        rows.append(row)
    return rows


def packed_rows(lengths: Sequence[int], max_len: int, seed: int) -> int:
    """How many rows the trainer's packing makes of conversations of these lengths."""
    return len(pack_order(lengths, max_len, seed))


# --- the run's size --------------------------------------------------------------------------------


@dataclass
class RunSize:
    train_rows: int  # conversations, or packed rows of max_seq_length
    packing: bool
    epochs: int
    max_steps: int
    steps: int  # optimizer steps
    per_device_batch: int
    accumulation: int
    devices: int
    effective_batch: int  # rows per optimizer step
    tokens_per_epoch: int  # every token of the training rows (what the model reads)
    trained_tokens_per_epoch: int  # the assistant tokens within max_seq_length (what the loss sees)
    evals: int  # evaluation passes during training (before, about every quarter, at the end)

    @classmethod
    def build(  # noqa: PLR0913 - the job's parameters and what the data and devices make of them
        cls, params: dict[str, Any], rows: int, devices: int, train: SplitStats, packing: bool, evals: bool
    ) -> RunSize:
        """The size of a run over `rows` training rows (`train`'s tokens) on `devices` devices;
        `evals`: whether the trainer evaluates during training (ftctl's local trainer does)."""
        batch = int(params["per_device_train_batch_size"])
        accumulation = int(params["gradient_accumulation_steps"])
        epochs, max_steps = int(params["num_train_epochs"]), int(params["max_steps"])
        steps = planned_steps(rows, batch, accumulation, devices, epochs, max_steps)
        return cls(
            train_rows=rows,
            packing=packing,
            epochs=epochs,
            max_steps=max_steps,
            steps=steps,
            per_device_batch=batch,
            accumulation=accumulation,
            devices=devices,
            effective_batch=batch * accumulation * devices,
            tokens_per_epoch=train.tokens_kept,
            trained_tokens_per_epoch=train.assistant_tokens - train.assistant_tokens_lost,
            evals=evals_during_training(steps) if evals else 0,
        )


def planned_steps(rows: int, batch: int, accumulation: int, devices: int, epochs: int, max_steps: int) -> int:
    """The count of optimizer steps of a run over `rows` rows (the local trainer's, as the Trainer
    counts them: batches per device, then updates of `accumulation` batches, times the epochs)."""
    if max_steps > 0:
        return max_steps
    batches = -(-rows // (batch * max(1, devices)))
    updates = -(-batches // max(1, accumulation))
    return int(math.ceil(updates * float(epochs)))


def eval_every(steps: int) -> int:
    """The local trainer evaluates before training, then every this many steps (about a quarter)."""
    return max(1, math.ceil(steps / 4))


def evals_during_training(steps: int) -> int:
    """Evaluation passes the local trainer makes: before training, every eval_every(steps) steps, and a
    last one at the end when the curve did not land on it."""
    every = eval_every(steps)
    return 1 + steps // every + (1 if steps % every else 0)


# --- memory ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    context_length: int | None
    model_type: str | None = None
    attn_implementation: str | None = None

    @property
    def qkv_width(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    @classmethod
    def from_config(cls, config: dict[str, Any], parameters: int | None) -> ModelShape:
        """From a Hugging Face config.json (its text config for multimodal ones)."""
        nested = config.get("text_config")
        text: dict[str, Any] = nested if isinstance(nested, dict) else config
        hidden = int(text.get("hidden_size") or text.get("n_embd") or 0)
        layers = int(text.get("num_hidden_layers") or text.get("n_layer") or 0)
        heads = int(text.get("num_attention_heads") or text.get("n_head") or 1)
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or (hidden // heads if heads else 0))
        intermediate = int(text.get("intermediate_size") or text.get("n_inner") or 4 * hidden)
        vocab = int(text.get("vocab_size") or 0)
        if parameters is None:  # embeddings (and an untied output layer) + per layer attention, gated MLP
            per_layer = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
            per_layer += 3 * hidden * intermediate + 2 * hidden
            tied = text.get("tie_word_embeddings", config.get("tie_word_embeddings", True))
            parameters = vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden
        return cls(
            parameters=int(parameters),
            hidden=hidden,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate=intermediate,
            vocab=vocab,
            context_length=text.get("max_position_embeddings"),
            model_type=text.get("model_type"),
            attn_implementation=config.get("_attn_implementation") or config.get("attn_implementation"),
        )

    def module_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each per-layer linear module, by the names Phi-3 and Llama use."""
        h, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return {
            "qkv_proj": (h, q + 2 * kv),
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_up_proj": (h, 2 * i),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def lora_parameters(self, rank: int, targets: Sequence[str]) -> int | None:
        """LoRA's parameter count for these target modules (None when one is not a known name)."""
        dims = self.module_dims()
        if not targets or any(t not in dims for t in targets):
            return None
        return self.layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets)


@dataclass
class MemorySetup:
    """How the job trains, as far as memory goes."""

    device: str  # cpu | cuda
    precision: str  # 32 | 16 | bf16
    batch: int  # per device
    seq: int  # the longest row of a batch
    lora: bool
    trainable: int  # trainable parameters (the adapters under LoRA)
    devices: int = 1
    zero_stage: int | None = None  # DeepSpeed ZeRO stage, when on
    data_tokens: int = 0  # tokens held in host memory (CPU: counts against the same RAM)


@dataclass
class MemoryEstimate:
    device: str
    limit_bytes: int | None
    limit_source: str
    components: dict[str, int]
    tensors_bytes: int  # torch's own allocations at the peak (what the calibration measures)
    total_bytes: int  # tensors + runtime (+ data on the CPU): what must fit in the limit
    with_checkpointing_bytes: int  # the total with gradient checkpointing
    verdict: str  # fits | tight | oom | unknown
    suggestion: str | None = None
    measured_bytes: int | None = None  # torch's peak in the calibration, when one ran
    measured_source: str | None = None

    @property
    def share(self) -> float | None:
        return self.total_bytes / self.limit_bytes if self.limit_bytes else None


def _activations(shape: ModelShape, setup: MemorySetup, checkpointing: bool) -> tuple[int, int]:
    """(layer activations, logits) in bytes at the peak."""
    tokens = setup.batch * setup.seq
    amp = setup.device == "cuda" and setup.precision in ("16", "bf16")
    act_bytes = 2 if amp else 4
    per_layer = (
        ACT_HIDDEN * shape.hidden + ACT_QKV * shape.qkv_width + ACT_MLP * shape.intermediate + ACT_LAYER
    )
    if not setup.lora:
        per_layer += FULL_FT_HIDDEN * shape.hidden
    if shape.attn_implementation == "eager":  # scores and probabilities, batch x heads x seq x seq
        per_layer += 2 * shape.heads * setup.seq
    if checkpointing:
        layers = tokens * act_bytes * (shape.layers * shape.hidden + per_layer)
    else:
        layers = tokens * act_bytes * shape.layers * per_layer
    logits = tokens * 4 * ACT_VOCAB * shape.vocab
    return int(layers), int(logits)


def estimate_memory(
    shape: ModelShape, setup: MemorySetup, limit_bytes: int | None, limit_source: str
) -> MemoryEstimate:
    """What training keeps in memory at its peak, per device (see the module docstring)."""
    amp = setup.device == "cuda" and setup.precision in ("16", "bf16")
    weight_bytes = 2 if (amp and setup.lora) else 4
    weights = shape.parameters * weight_bytes
    adapters = setup.trainable * 4 if setup.lora else 0
    grads = setup.trainable * 4
    optimizer = setup.trainable * 8
    shards = max(1, setup.devices) if setup.zero_stage else 1
    if setup.zero_stage:
        grads, optimizer = grads // shards, optimizer // shards
        if setup.zero_stage >= 3:
            weights //= shards
    layers, logits = _activations(shape, setup, checkpointing=False)
    components = {
        "weights": weights,
        "adapters": adapters,
        "gradients": grads,
        "optimizer": optimizer,
        "activations": layers,
        "logits": logits,
    }
    tensors = sum(components.values())
    runtime = CUDA_RUNTIME_BYTES if setup.device == "cuda" else CPU_RUNTIME_BYTES
    components["runtime"] = runtime
    if setup.device == "cpu":
        components["data"] = setup.data_tokens * DATA_BYTES_PER_TOKEN
    total = sum(components.values())
    ck_layers, _ = _activations(shape, setup, checkpointing=True)
    with_ck = total - layers + ck_layers
    estimate = MemoryEstimate(
        device=setup.device,
        limit_bytes=limit_bytes,
        limit_source=limit_source,
        components=components,
        tensors_bytes=tensors,
        total_bytes=total,
        with_checkpointing_bytes=with_ck,
        verdict=verdict(total, limit_bytes),
    )
    if estimate.verdict in ("oom", "tight"):
        estimate.suggestion = fitting_change(shape, setup, limit_bytes)
    return estimate


def verdict(total: int, limit: int | None) -> str:
    if not limit:
        return "unknown"
    if total > limit * DEFINITE_OOM:
        return "oom"
    if total > limit * TIGHT:
        return "tight"
    return "fits"


def fitting_change(shape: ModelShape, setup: MemorySetup, limit: int | None) -> str | None:
    """The smallest change of the per-device batch (same effective batch through accumulation), else
    of max_seq_length, that brings the estimate within 90% of `limit`."""
    if not limit:
        return None

    def total(batch: int, seq: int) -> int:
        trial = MemorySetup(**{**asdict(setup), "batch": batch, "seq": seq})
        return estimate_memory_total(shape, trial)

    batch = setup.batch
    while batch > 1:
        batch //= 2
        if total(batch, setup.seq) <= limit * TIGHT:
            factor = setup.batch // batch
            return (
                f"per_device_train_batch_size={batch} with gradient_accumulation_steps x{factor} "
                "(the same effective batch)"
            )
    seq = setup.seq
    while seq > 16:
        seq //= 2
        if total(1, seq) <= limit * TIGHT:
            return f"per_device_train_batch_size=1 and max_seq_length={seq}"
    if not setup.lora:
        return "apply_lora=true (a full fine-tune keeps gradients and optimizer state for every weight)"
    return "a device with more memory, or a smaller model"


def estimate_memory_total(shape: ModelShape, setup: MemorySetup) -> int:
    amp = setup.device == "cuda" and setup.precision in ("16", "bf16")
    weights = shape.parameters * (2 if (amp and setup.lora) else 4)
    trainable = setup.trainable * ((4 if setup.lora else 0) + 12)
    layers, logits = _activations(shape, setup, checkpointing=False)
    runtime = CUDA_RUNTIME_BYTES if setup.device == "cuda" else CPU_RUNTIME_BYTES
    data = setup.data_tokens * DATA_BYTES_PER_TOKEN if setup.device == "cpu" else 0
    return weights + trainable + layers + logits + runtime + data


# --- time ------------------------------------------------------------------------------------------


@dataclass
class TimeEstimate:
    step_s: float  # a step once warmed up (the median of the calibration's)
    first_step_s: float  # the first step, which warms up
    fastest_step_s: float | None  # the calibration's fastest step (the least disturbed by other work)
    eval_s: float | None  # one evaluation pass
    evals: int
    steps: int
    train_s: float  # what the job reports as train_runtime_s: the steps and the evaluations between
    load_s: float | None
    source: str

    @classmethod
    def build(  # noqa: PLR0913 - the calibration's figures and the run's counts
        cls,
        calibration: dict[str, Any],
        steps: int,
        evals: int,
        logged_steps: int,
        source: str,
    ) -> TimeEstimate:
        """From a calibration's result (calibrate.py): a warm-up step, the other steps at the median
        pace, the evaluation passes, and the logging."""
        step_s = float(calibration["step_s"])
        first = calibration.get("first_step_s")
        first = step_s if first is None else max(step_s, float(first))
        eval_s = calibration.get("eval_s")
        evals = evals if eval_s is not None else 0
        train = first + step_s * max(0, steps - 1) + (eval_s or 0.0) * evals + LOG_S * logged_steps
        fastest = calibration.get("fastest_step_s")
        return cls(
            step_s=step_s,
            first_step_s=first,
            fastest_step_s=None if fastest is None else float(fastest),
            eval_s=eval_s,
            evals=evals,
            steps=steps,
            train_s=train,
            load_s=calibration.get("load_s"),
            source=source,
        )


# --- the plan and its findings ---------------------------------------------------------------------


@dataclass
class Finding:
    level: str  # error (submit refuses) | warning
    message: str
    hint: str | None = None


@dataclass
class CheckpointDisk:
    """The disk the local job's checkpoints take at most (finetune.save_steps, save_total_limit)."""

    every_steps: int  # 0: by time only, or none
    kept: int  # checkpoints on disk at most
    each_bytes: int
    total_bytes: int
    free_bytes: int | None  # free on the workspace's file system now
    folder: str


@dataclass
class Plan:
    backend: str
    model: dict[str, Any]  # name, parameters, context_length, trainable
    settings: dict[str, Any]  # max_seq_length, packing, precision, device, lora...
    splits: list[SplitStats]
    run: RunSize | None
    memory: MemoryEstimate | None
    time: TimeEstimate | None
    tokens_source: str  # how the tokens were counted
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tokens_exact: bool = True  # False: estimated from characters (no tokenizer on this machine)
    time_note: str | None = None  # why there is no time estimate, when there is none
    checkpoints: CheckpointDisk | None = None  # local: the checkpoints' disk

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def split(self, name: str) -> SplitStats | None:
        return next((s for s in self.splits if s.split == name), None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.memory is not None:
            data["memory"]["share"] = self.memory.share
        data["ok"] = not self.errors
        return data


def check(plan: Plan, train_split: str) -> list[Finding]:
    """What makes submit refuse (error) or warn, from the plan's figures."""
    found: list[Finding] = []
    seq = int(plan.settings["max_seq_length"])
    context = plan.model.get("context_length")
    if context and seq > int(context):
        found.append(
            Finding(
                "error",
                f"finetune.max_seq_length {seq} is above the model's context length {context}",
                hint=f"set finetune.max_seq_length to at most {context}",
            )
        )
    train = plan.split(train_split)
    if train is not None:
        if train.assistant_tokens == 0:
            found.append(
                Finding(
                    "error",
                    f"{train_split} has no assistant tokens to train on ({train.conversations} "
                    "conversations, none with an assistant reply)",
                    hint="the loss is on assistant replies only: check the data's roles",
                )
            )
        elif train.dropped >= train.conversations:
            found.append(
                Finding(
                    "error",
                    f"no {train_split} conversation keeps an assistant token within max_seq_length {seq}",
                    hint=f"raise finetune.max_seq_length (p99 is {train.p99} tokens)",
                )
            )
        elif train.end_of_turn_labelled == 0:
            found.append(
                Finding(
                    "warning",
                    f"the training labels of {train_split} end no reply with an end-of-turn token: the model "
                    "will not learn to stop",
                    hint="the chat template must close each assistant turn with the token the endpoint "
                    "stops on (Phi-3: <|end|>)",
                )
            )
        if (
            train.assistant_tokens
            and train.dropped < train.conversations
            and (train.assistant_lost_share > TRUNCATION_WARNING)
        ):
            found.append(
                Finding(
                    "warning",
                    f"max_seq_length {seq} cuts {train.assistant_lost_share:.1%} of the assistant tokens "
                    f"of {train_split} ({train.truncated:,} of {train.conversations:,} conversations are "
                    "longer)",
                    hint=f"finetune.max_seq_length={_round_up(train.p99)} keeps 99% of the conversations "
                    "whole",
                )
            )
    disk = plan.checkpoints
    if disk is not None and disk.free_bytes is not None and disk.total_bytes > disk.free_bytes:
        found.append(
            Finding(
                "warning",
                f"the checkpoints take up to {fmt_bytes(disk.total_bytes)}, and {disk.folder} has "
                f"{fmt_bytes(disk.free_bytes)} free",
                hint="lower finetune.save_total_limit (or free disk space)",
            )
        )
    memory = plan.memory
    if memory is not None and memory.verdict == "oom":
        found.append(
            Finding(
                "error",
                f"out of memory: training needs about {fmt_bytes(memory.total_bytes)}, "
                f"{memory.limit_source} has {fmt_bytes(memory.limit_bytes or 0)}",
                hint=f"try {memory.suggestion}" if memory.suggestion else None,
            )
        )
    elif memory is not None and memory.verdict == "tight":
        found.append(
            Finding(
                "warning",
                f"memory is tight: about {fmt_bytes(memory.total_bytes)} of "
                f"{fmt_bytes(memory.limit_bytes or 0)} ({memory.limit_source})",
                hint=f"to be safe: {memory.suggestion}" if memory.suggestion else None,
            )
        )
    return found


def _round_up(n: int) -> int:
    """A max_seq_length that holds n tokens: the next multiple of 64."""
    return max(64, -(-n // 64) * 64)


# --- showing it ------------------------------------------------------------------------------------


def fmt_bytes(n: int | float) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{s:.1f} s"


def _split_rows(plan: Plan) -> list[list[str]]:
    rows = []
    for s in plan.splits:
        rows.append(
            [
                s.split + (" *" if s.estimated else ""),
                f"{s.conversations:,}",
                f"{s.tokens:,}",
                f"{s.p50:,}",
                f"{s.p90:,}",
                f"{s.p99:,}",
                f"{s.max:,}",
                f"{s.assistant_share:.1%}",
                f"{s.truncated:,}",
                f"{s.assistant_lost_share:.1%}",
            ]
        )
    return rows


SPLIT_HEADERS = ["SPLIT", "CONVERSATIONS", "TOKENS", "P50", "P90", "P99", "MAX", "ASSISTANT", "CUT", "LOST"]


def render(plan: Plan) -> str:
    from ftctl.ui import table

    m, st = plan.model, plan.settings
    lines = [
        f"plan: {m.get('name')} ({(m.get('parameters') or 0):,} parameters, context "
        f"{m.get('context_length')}) on {st.get('device')}, precision {st.get('precision')}, "
        + (
            f"LoRA r={st.get('lora_r')} ({(m.get('trainable') or 0):,} trainable)"
            if st.get("lora")
            else "full"
        )
    ]
    lines.append(f"tokens ({plan.tokens_source}; max_seq_length {st['max_seq_length']}):")
    lines.append(table(_split_rows(plan), SPLIT_HEADERS))
    lines.append(
        "  ASSISTANT: share of tokens trained on; CUT: conversations longer than max_seq_length; "
        "LOST: assistant tokens cut"
    )
    if any(s.estimated for s in plan.splits):
        lines.append("  * counted on an evenly spaced sample (plan.sample_rows) and scaled to the file")
    run = plan.run
    if run is not None:
        rows = f"{run.train_rows:,} {'packed rows' if run.packing else 'conversations'}"
        lines.append(
            f"run: {run.steps:,} optimizer steps ({rows}, {run.epochs} epoch(s)"
            + (f", max_steps {run.max_steps}" if run.max_steps > 0 else "")
            + f"); effective batch {run.effective_batch} = {run.per_device_batch} per device x "
            f"{run.accumulation} accumulation x {run.devices} device(s); "
            f"{run.tokens_per_epoch:,} tokens per epoch, {run.trained_tokens_per_epoch:,} trained"
        )
    lines.extend(_memory_lines(plan.memory))
    lines.extend(_time_lines(plan))
    lines.extend(_checkpoint_lines(plan.checkpoints))
    lines.extend(f"note: {n}" for n in plan.notes)
    for f in plan.findings:
        lines.append(f"{f.level}: {f.message}" + (f" ({f.hint})" if f.hint else ""))
    if not plan.errors:
        lines.append("ok: submit would start this run" + (" (see the warnings)" if plan.warnings else ""))
    return "\n".join(lines)


def _memory_lines(memory: MemoryEstimate | None) -> list[str]:
    if memory is None:
        return []
    c = memory.components
    parts = ", ".join(f"{name} {fmt_bytes(value)}" for name, value in c.items() if value)
    share = f" ({memory.share:.0%})" if memory.share is not None else ""
    limit = f"of {fmt_bytes(memory.limit_bytes)} " if memory.limit_bytes else ""
    lines = [
        f"memory: about {fmt_bytes(memory.total_bytes)} {limit}{share} on {memory.limit_source} "
        f"[{memory.verdict}]".replace("  ", " "),
        f"  {parts}",
        f"  with gradient checkpointing: {fmt_bytes(memory.with_checkpointing_bytes)}",
    ]
    if memory.measured_bytes:
        diff = memory.tensors_bytes / memory.measured_bytes - 1
        lines.append(
            f"  measured (calibration, {memory.measured_source}): {fmt_bytes(memory.measured_bytes)} of "
            f"tensors at the peak; estimate {fmt_bytes(memory.tensors_bytes)} ({diff:+.0%})"
        )
    return lines


def _checkpoint_lines(disk: CheckpointDisk | None) -> list[str]:
    if disk is None:
        return []
    if disk.kept == 0:
        return ["checkpoints: none (finetune.save_steps 0): a killed job starts over"]
    free = f", {fmt_bytes(disk.free_bytes)} free" if disk.free_bytes is not None else ""
    every = f"every {disk.every_steps} steps" if disk.every_steps else "by time"
    return [
        f"checkpoints: {every}, at most {disk.kept} kept x {fmt_bytes(disk.each_bytes)} = "
        f"{fmt_bytes(disk.total_bytes)} on disk ({disk.folder}{free})"
    ]


def _time_lines(plan: Plan) -> list[str]:
    t = plan.time
    if t is None:
        return [
            f"time: {plan.time_note or 'not calibrated (`ftctl plan` measures a few steps on this machine)'}"
        ]
    evals = f" + {t.evals} evaluations x {t.eval_s:.2f} s" if t.eval_s is not None and t.evals else ""
    load = f", plus about {fmt_seconds(t.load_s)} to load" if t.load_s else ""
    return [
        f"time: {t.steps:,} steps x {t.step_s:.3f} s{evals} = about {fmt_seconds(t.train_s)} of "
        f"training{load} ({t.source})"
    ]


def submit_check(ui: UI, plan: Plan) -> None:
    """What `ftctl submit` does with the plan before it starts a job: shows the run's size in a line,
    warns about what likely goes wrong, and refuses (UsageError, exit 2) what cannot work."""
    from ftctl.errors import UsageError

    run, memory, time = plan.run, plan.memory, plan.time
    if run is not None:
        line = (
            f"  plan: {run.steps:,} steps, effective batch {run.effective_batch}, "
            f"{run.tokens_per_epoch:,} tokens/epoch" + ("" if plan.tokens_exact else " (estimated)")
        )
        if memory is not None:
            line += f"; memory about {fmt_bytes(memory.total_bytes)}"
            if memory.limit_bytes:
                line += f" of {fmt_bytes(memory.limit_bytes)}"
        if time is not None:
            line += f"; about {fmt_seconds(time.train_s)} of training"
        ui.info(line)
    for finding in plan.warnings:
        ui.warn(finding.message + (f" ({finding.hint})" if finding.hint else ""))
    if plan.errors:
        first, *others = plan.errors
        message = first.message + "".join(f"; {f.message}" for f in others)
        hint = first.hint or ""
        hint = (
            hint + "; " if hint else ""
        ) + "`ftctl plan` shows the whole plan; `submit --no-plan` skips the check"
        raise UsageError(f"submit refused: {message}", hint=hint)
