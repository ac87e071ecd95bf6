"""The local backend's measurements of a fine-tuned model: held-out loss (computed as the trainer's
eval_loss), whether the model ends its turn, side-by-side greedy generations, the chat-template check
between training and serving, and the promotion gate `register` runs first.

- held-out loss: the test split, tokenized by the trainer's own function with the base model's
  tokenizer (max_seq_length, max_eval_samples), padded batches of per_device_eval_batch_size, the
  batch-size weighted mean of the batches' mean loss on assistant tokens: the trainer's eval_loss, so
  the base model's figure equals the job's eval_loss at step 0 and the fine-tuned one its last.
- end of turn: greedy replies to held-out prompts must end with a token the endpoint stops on before
  twice the dataset reply's length; and the end-of-turn token the trainer labels must keep a good
  probability right after the dataset's own reply (see ftctl.evaluation.StopCheck).
- template check: the token ids the endpoint feeds the model for a conversation (the server's prompt
  building with the registered model's tokenizer) must be exactly the ids the trainer had before the
  reply (the trainer's tokenize function with the base model's tokenizer), and the token the trainer
  taught to end a turn must be one the endpoint stops on.

Heavy imports (torch, transformers, mlflow) happen inside functions only.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import evaluation
from ftctl.backends.local.backend import local
from ftctl.data.chat_tokens import first_turn as _first_turn
from ftctl.data.chat_tokens import stop_token_ids
from ftctl.errors import UsageError
from ftctl.evaluation import (
    EvalReport,
    GateDecision,
    ModelLoss,
    Sample,
    StopCheck,
    decide,
    heldout_setup,
    tagged_loss,
)
from ftctl.records import StateView
from ftctl.stages.contract import StageCall
from ftctl.stages.shared import model_name, prepared_files

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.records import SubmitOutputs
    from ftctl.stages.contract import State

STOP_PROMPTS = 8  # greedy replies checked for their end of turn
END_PROBABILITY_CONVERSATIONS = 32  # held-out replies the end-of-turn probability is taken over
STOP_CHECK_CONVERSATIONS = 64  # held-out conversations submit's end-of-turn check draws from
TEMPLATE_CONVERSATIONS = 3  # held-out conversations rendered both ways (every assistant turn of each)
UNLIMITED = 1 << 40


# --- loading ---------------------------------------------------------------------------------------


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer as the trainer loads it (pad token set, chat template required)."""
    from transformers.utils import logging as hf_logging

    from ftctl.data.chat_tokens import load_chat_tokenizer
    from ftctl.models.layout import resolve_hf_dir

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    return load_chat_tokenizer(resolve_hf_dir(model_dir))


def load_model(model_dir: Path, device: str) -> Any:
    """The model for inference, as the endpoint loads it (torch's threads chosen for the machine)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl import threads
    from ftctl.models.layout import resolve_hf_dir

    threads.apply()

    model: Any = AutoModelForCausalLM.from_pretrained(
        str(resolve_hf_dir(model_dir)), dtype=torch.float32 if device == "cpu" else "auto"
    )
    return model.to(device).eval()


def held_out(path: Path, limit: int | None = None) -> list[list[dict[str, str]]]:
    """The held-out conversations (messages lists) of a prepared split."""
    from ftctl.backends.local.trainer import read_conversations

    found: list[list[dict[str, str]]] = []
    for _, messages in read_conversations(path):
        if limit is not None and len(found) >= limit:
            break
        found.append(messages)
    return found


# --- held-out loss ---------------------------------------------------------------------------------


@dataclass
class HeldOut:
    """The held-out set as the trainer evaluates it."""

    path: Path
    examples: list[dict]
    batch_size: int
    setup: str  # heldout_setup()

    @classmethod
    def build(cls, tokenizer: Any, path: Path, sha256: str | None, params: dict[str, Any]) -> HeldOut:
        from ftctl.backends.local.trainer import load_examples

        limit = params.get("max_eval_samples")
        examples, _ = load_examples(
            tokenizer, path, int(params["max_seq_length"]), limit=-1 if limit is None else int(limit)
        )
        return cls(
            path, examples, int(params["per_device_eval_batch_size"]), heldout_setup(path, sha256, params)
        )


def heldout_loss(model: Any, tokenizer: Any, held: HeldOut, device: str) -> float | None:
    """The mean loss on assistant tokens, as the transformers Trainer's eval_loss: each padded batch's
    mean, weighted by the batch's size."""
    import torch

    from ftctl.backends.local.trainer import PadCollator

    if not held.examples:
        return None
    collator = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if device == "cuda" else None)
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(held.examples), held.batch_size):
            batch = held.examples[start : start + held.batch_size]
            inputs = {k: v.to(device) for k, v in collator(batch).items()}
            loss = float(model(**inputs, use_cache=False).loss)
            total += loss * len(batch)
            count += len(batch)
    return total / count


# --- end of turn -----------------------------------------------------------------------------------


def _greedy(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, stop: list[int]
) -> list[list[int]]:
    """Greedy continuations (token ids, up to and including a stop token) of prompt texts, one left-padded
    batch as the endpoint generates them."""
    import torch

    if not prompts:
        return []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    with torch.inference_mode():
        output = model.generate(
            **{k: v.to(device) for k, v in encoded.items()},
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
        )
    width = encoded["input_ids"].shape[1]
    replies = []
    for row in output[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), None)
        replies.append(row if cut is None else row[: cut + 1])
    return replies


def _prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def _end_probability(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], stop: list[int]
) -> tuple[float | None, bool | None]:
    """(the median probability of a stop token right after the dataset's reply, whether the trainer's
    labels end that reply with a stop token), over the first reply of each conversation."""
    import torch

    from ftctl.backends.local.trainer import IGNORE_INDEX, tokenize_conversation

    probs: list[float] = []
    labelled: list[bool] = []
    device = next(model.parameters()).device
    for messages in conversations:
        turn = _first_turn(messages)
        if turn is None:
            continue
        prompt, reply = turn
        tokenized = tokenize_conversation(
            tokenizer, [*prompt, {"role": "assistant", "content": reply}], UNLIMITED
        )
        if tokenized is None:
            continue
        ids, labels = tokenized
        last = max(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        labelled.append(ids[last] in stop)
        end = last if ids[last] in stop else last + 1  # the reply's content ends before `end`
        with torch.inference_mode():
            logits = model(torch.tensor([ids[:end]], device=device), use_cache=False).logits[0, -1]
        p = torch.softmax(logits.float(), -1)
        probs.append(float(sum(p[s] for s in stop)))
    if not probs:
        return None, None
    return statistics.median(probs), sum(labelled) > len(labelled) / 2


def stop_check(
    model: Any, tokenizer: Any, model_dir: Path, conversations: list[list[dict[str, str]]]
) -> StopCheck:
    """Whether the model ends its turn on held-out conversations (ftctl.evaluation.StopCheck)."""
    stop = stop_token_ids(tokenizer, model_dir)
    turns = [t for t in (_first_turn(m) for m in conversations) if t is not None]
    lengths = [len(tokenizer(reply, add_special_tokens=False)["input_ids"]) for _, reply in turns]
    chosen = sorted(range(len(turns)), key=lambda i: lengths[i])[:STOP_PROMPTS]
    limits = [min(1024, max(32, 2 * lengths[i] + 16)) for i in chosen]
    prompts = [_prompt_text(tokenizer, turns[i][0]) for i in chosen]
    replies = _greedy(model, tokenizer, prompts, max(limits, default=32), stop)
    stopped = sum(
        1
        for reply, limit in zip(replies, limits, strict=True)
        if reply and reply[-1] in stop and len(reply) <= limit
    )
    probability, labelled = _end_probability(
        model, tokenizer, conversations[:END_PROBABILITY_CONVERSATIONS], stop
    )
    return StopCheck(
        prompts=len(prompts),
        stopped=stopped,
        max_new_tokens=limits,
        end_token="/".join(str(t) for t in tokenizer.convert_ids_to_tokens(stop)),
        end_probability=None if probability is None else round(probability, 4),
        lengths=[len(r) for r in replies],
        labels_end_turn=labelled,
    )


def held_out_stop_check(model: Any, tokenizer: Any, model_dir: Path, test_file: Path) -> StopCheck:
    """stop_check on the first held-out conversations of a prepared test split: what submit records,
    computed by the trainer on the model it has just saved to `model_dir` (or by submit on a reload)."""
    return stop_check(model, tokenizer, model_dir, held_out(test_file, STOP_CHECK_CONVERSATIONS))


def check_model_stops(
    ctx: Context, recorded: StateView, model_dir: Path, found: StopCheck | None = None
) -> dict[str, Any] | None:
    """After training: whether the fine-tuned model ends its turn (None without a test split), for
    submit's outputs, so `ftctl status` shows it. `found` is the trainer's own check of the model it
    saved; without one (a job of another launch), the saved model is loaded and checked here."""
    files = prepared_files(recorded.state)
    split = ctx.cfg.data.test_split
    if split not in files:
        return None
    if found is None:
        device = recorded.check_compute.device or "cpu"
        with ctx.ui.spinner("checking that the fine-tuned model ends its turn", quiet=True):
            tokenizer = load_tokenizer(model_dir)
            model = load_model(model_dir, device)
            found = held_out_stop_check(model, tokenizer, model_dir, Path(files[split]["path"]))
    result = {
        "prompts": found.prompts,
        "stopped": found.stopped,
        "end_token": found.end_token,
        "end_probability": found.end_probability,
        "labels_end_turn": found.labels_end_turn,
        "ok": found.ok,
        "message": found.message,
    }
    if found.ok:
        ctx.ui.info(f"  end of turn: {found.describe()}")
    else:
        ctx.ui.warn(f"{found.message} ({found.describe()}; `ftctl evaluate` shows replies)")
    return result


# --- the chat template: training and serving -------------------------------------------------------


@dataclass
class TemplateCheck:
    conversations: int
    turns: int
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _serving_ids(serve_tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt ids the endpoint generates from: the server's prompt building and encoding."""
    from ftctl.backends.local.serving.generation import Generator

    generator = Generator(Path("."))
    generator.tokenizer = serve_tokenizer
    try:
        text = generator.prompt(messages)
    finally:
        generator._model_thread.shutdown(wait=False)
    return list(serve_tokenizer([text], padding=True, add_special_tokens=False)["input_ids"][0])


def _reply_start(labels: list[int]) -> int:
    """Where the last reply's labels begin (the trainer conditions that reply on the ids before it)."""
    from ftctl.backends.local.trainer import IGNORE_INDEX

    start = max(k for k, label in enumerate(labels) if label != IGNORE_INDEX)
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start


def _describe_difference(tokenizer: Any, trained: list[int], served: list[int]) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(trained, served, strict=False)) if a != b),
        min(len(trained), len(served)),
    )
    return (
        f"from token {at}: training has {tokenizer.decode(trained[at : at + 6])!r}, "
        f"the endpoint {tokenizer.decode(served[at : at + 6])!r}"
    )


# What the check's result depends on besides the two folders' small files and the conversations: bump it
# when the comparison itself changes.
TEMPLATE_CHECK_VERSION = 1
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack"})
# Larger files are no tokenizer's (the largest tokenizer.json files are tens of MB): read by name and size.
TEMPLATE_KEY_MAX_FILE_BYTES = 256 << 20


def template_key(train_dir: Path, serve_dir: Path, conversations: list[list[dict[str, str]]]) -> str:
    """A digest of everything `template_check(train_dir, serve_dir, conversations)` reads: every file
    of each Hugging Face folder but its weights (the tokenizer, its chat template, the generation
    config), the conversations, and the versions of the code that renders them (ftctl, transformers,
    tokenizers). Equal digests, equal results: deploy reuses the check the trainer made, without
    loading transformers. Standard library only."""
    import hashlib
    import json
    from importlib import metadata

    import ftctl
    from ftctl.models.layout import resolve_hf_dir

    digest = hashlib.sha256()
    versions = [TEMPLATE_CHECK_VERSION, ftctl.__version__]
    for dist in ("transformers", "tokenizers"):
        try:
            versions.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            versions.append(None)
    digest.update(json.dumps([versions, conversations], sort_keys=True).encode())
    for role, folder in (("train", train_dir), ("serve", serve_dir)):
        hf_dir = resolve_hf_dir(folder)
        for path in sorted(hf_dir.iterdir()):
            if path.suffix in WEIGHT_SUFFIXES or not path.is_file():
                continue
            size = path.stat().st_size
            digest.update(f"\0{role}/{path.name}\0{size}\0".encode())
            if size <= TEMPLATE_KEY_MAX_FILE_BYTES:
                content = hashlib.sha256()
                with path.open("rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        content.update(chunk)
                digest.update(content.digest())
    return digest.hexdigest()


def template_check(
    train_dir: Path, serve_dir: Path, conversations: list[list[dict[str, str]]]
) -> TemplateCheck:
    """Render held-out conversations through the trainer's tokenize function (base model's tokenizer)
    and the endpoint's prompt building (the served model's tokenizer); compare the ids at every reply."""
    from ftctl.backends.local.trainer import IGNORE_INDEX, tokenize_conversation

    train_tok = load_tokenizer(train_dir)
    serve_tok = load_tokenizer(serve_dir)
    stop = stop_token_ids(serve_tok, serve_dir)
    found = TemplateCheck(conversations=len(conversations), turns=0)
    for n, messages in enumerate(conversations, 1):
        reply = 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or i == 0:
                continue
            reply += 1
            tokenized = tokenize_conversation(train_tok, messages[: i + 1], UNLIMITED)
            if tokenized is None:
                continue
            ids, labels = tokenized
            found.turns += 1
            last = max(k for k, label in enumerate(labels) if label != IGNORE_INDEX)
            where = f"conversation {n}, reply {reply}"
            try:
                served = _serving_ids(serve_tok, messages[:i])
            except Exception as exc:  # noqa: BLE001 - the endpoint's template refuses it (BadRequest)
                found.mismatches.append(f"{where}: the endpoint cannot render it ({exc})")
                continue
            # The endpoint's prompt must be exactly what the trainer had before this reply's first label.
            trained = ids[: _reply_start(labels)]
            if served != trained:
                found.mismatches.append(f"{where}: {_describe_difference(train_tok, trained, served)}")
            elif ids[last] not in stop:
                token = train_tok.convert_ids_to_tokens(ids[last])
                found.mismatches.append(
                    f"{where}: training ends the reply with {token!r}, which the endpoint does not stop on"
                )
    return found


def trained_template_check(base_dir: Path, hf_dir: Path, test_file: Path) -> dict[str, Any]:
    """The trainer's template check of the model it has just saved (`hf_dir`) against the base model,
    on the test split: what deploy would check, with its key (see `template_key`), for submit's outputs."""
    conversations = held_out(test_file, TEMPLATE_CONVERSATIONS)
    found = template_check(base_dir, hf_dir, conversations)
    return {"key": template_key(base_dir, hf_dir, conversations), **asdict(found)}


def _recorded_template_check(recorded: StateView, key: str) -> TemplateCheck | None:
    """The trainer's check (submit's outputs) when it checked exactly what deploy would (the same key)."""
    made = recorded.submit.template_check or {}
    if made.get("key") != key:
        return None
    try:
        mismatches = [str(m) for m in made["mismatches"]]
        return TemplateCheck(int(made["conversations"]), int(made["turns"]), mismatches)
    except (KeyError, TypeError, ValueError):
        return None


def check_template(ctx: Context, recorded: StateView, model_dir: Path) -> TemplateCheck:
    """deploy's check: refuses (UsageError) a served model that formats conversations differently."""
    files = prepared_files(recorded.state)
    split = ctx.cfg.data.test_split if ctx.cfg.data.test_split in files else ctx.cfg.data.train_split
    if split not in files:
        return TemplateCheck(0, 0)
    base = Path(recorded.pick_model.need("path"))
    conversations = held_out(Path(files[split]["path"]), TEMPLATE_CONVERSATIONS)
    found = _recorded_template_check(recorded, template_key(base, model_dir, conversations))
    if found is None:
        with ctx.ui.spinner("checking that the endpoint formats conversations as training did", quiet=True):
            found = template_check(base, model_dir, conversations)
    if not found.ok:
        raise UsageError(
            f"the endpoint would format conversations differently from training: {found.mismatches[0]}"
            + (f" (and {len(found.mismatches) - 1} more)" if len(found.mismatches) > 1 else ""),
            hint="the registered model's tokenizer (its chat template) differs from the base model's; "
            "re-train, or fix tokenizer_config.json's chat_template in the model",
        )
    ctx.ui.info(f"  chat template: training and the endpoint agree on {found.turns} replies")
    return found


# --- the previous registered version and the gate --------------------------------------------------


def _run_id(version: Any) -> str | None:
    return getattr(version, "run_id", None) or None


def previous_version(ctx: Context, name: str, run_id: str | None) -> Any | None:
    """The newest registered version of `name` that is not from the run `run_id`."""
    client = local(ctx).mlflow.MlflowClient()
    escaped = name.replace("'", "\\'")
    try:
        versions = client.search_model_versions(f"name='{escaped}'")
    except Exception:  # noqa: BLE001 - no such registered model yet
        return None
    others = [v for v in versions if _run_id(v) != run_id]
    return max(others, key=lambda v: int(v.version), default=None)


def base_loss_from_metrics(ctx: Context, run_id: str | None) -> float | None:
    """The job's eval_loss before training (step 0): the base model on the held-out set."""
    if not run_id:
        return None
    client = local(ctx).mlflow.MlflowClient()
    try:
        history = client.get_metric_history(run_id, "eval_loss")
    except Exception:  # noqa: BLE001 - an unknown run
        return None
    at_start = [m.value for m in history if m.step == 0]
    return float(at_start[0]) if at_start else None


class _Models:
    """Loads models once each, on the compute's device."""

    def __init__(self, device: str) -> None:
        self.device = device

    def loss(self, model_dir: Path, tokenizer: Any, held: HeldOut) -> float | None:
        model = load_model(model_dir, self.device)
        try:
            return heldout_loss(model, tokenizer, held, self.device)
        finally:
            del model


def _setup(ctx: Context, recorded: StateView) -> tuple[Path, Any, HeldOut | None, dict[str, Any]]:
    """(base model folder, its tokenizer, the held-out set as the job evaluated it, job params)."""
    params = dict(recorded.submit.params or {})
    base = Path(recorded.pick_model.need("path"))
    tokenizer = load_tokenizer(base)
    files = prepared_files(recorded.state)
    split = ctx.cfg.data.test_split
    held = None
    if split in files and params:
        held = HeldOut.build(tokenizer, Path(files[split]["path"]), files[split].get("sha256"), params)
    return base, tokenizer, held, params


def _setup_digest(ctx: Context, recorded: StateView) -> str | None:
    """heldout_setup() of the job's held-out set (None without one), without tokenizing anything."""
    files = prepared_files(recorded.state)
    split = ctx.cfg.data.test_split
    params = recorded.submit.params or {}
    if split not in files or not params:
        return None
    return heldout_setup(Path(files[split]["path"]), files[split].get("sha256"), params)


def _previous_loss(
    ctx: Context, version: Any, tokenizer: Any, held: HeldOut, device: str
) -> tuple[float | None, str]:
    """The previous version's held-out loss: its tag when it was evaluated the same way, else computed."""
    from ftctl.backends.local.stages.deploy import registered_model_dir

    tagged = tagged_loss(version, held.setup)
    if tagged is not None:
        return tagged, f"tag of version {version.version}"
    folder = registered_model_dir(
        local(ctx), version.name, str(version.version), ctx.workspace / "evaluate" / "previous"
    )
    return _Models(device).loss(folder, tokenizer, held), "computed here"


def gate(ctx: Context, call: StageCall) -> GateDecision:
    """register's gate: the fine-tuned model's held-out loss (the job's eval_loss of the weights it
    output: the last step's, or under finetune.select: best the best checkpoint's) against the base
    model's (the job's eval_loss at step 0) and the previous registered version's (its tag; computed
    only when it has none comparable, or when the job logged no step-0 figure)."""
    policy = ctx.cfg.register_.gate
    if policy == "off":
        return decide("off", None, None)
    submit = call.upstream.submit
    run_id = submit.mlflow_run_id
    setup = _setup_digest(ctx, call.upstream)
    fine_tuned = submit.eval_loss
    if fine_tuned is None:
        if setup is None:
            return decide(policy, None, None, forced=call.options.skip_gate)
        fine_tuned = float("nan")  # evaluated, but not a number: the job diverged
    base = base_loss_from_metrics(ctx, run_id)
    previous = previous_version(ctx, model_name(ctx, call.upstream), run_id)
    prev_loss = None if previous is None else tagged_loss(previous, setup)
    if setup is not None and (base is None or (previous is not None and prev_loss is None)):
        device = call.upstream.check_compute.device or "cpu"
        base_dir, tokenizer, held, _ = _setup(ctx, call.upstream)
        assert held is not None
        if base is None:
            base = _Models(device).loss(base_dir, tokenizer, held)
        if previous is not None and prev_loss is None:
            prev_loss, _ = _previous_loss(ctx, previous, tokenizer, held, device)
    return decide(
        policy,
        float(fine_tuned),
        base,
        prev_loss,
        None if previous is None else str(previous.version),
        forced=call.options.skip_gate,
    )


def gate_tags(ctx: Context, recorded: StateView, decision: GateDecision) -> dict[str, str]:
    """The gate's numbers as tags of the registered version (ftctl.evaluation.gate_tags), and the
    end-of-turn check's count."""
    tags = evaluation.gate_tags(decision, _setup_digest(ctx, recorded))
    stops = recorded.submit.stop_check
    if isinstance(stops, dict) and stops.get("prompts"):
        tags["ftctl.eval.stops"] = f"{stops.get('stopped')}/{stops.get('prompts')}"
    return tags


def check_gate(ctx: Context, call: StageCall) -> GateDecision:
    """Run the gate; StageFailed (exit 1, with the numbers) when it refuses."""
    with ctx.ui.spinner("comparing held-out loss with the base model and the previous version", quiet=True):
        decision = gate(ctx, call)
    return evaluation.enforce(decision, ctx.ui)


# --- ftctl evaluate --------------------------------------------------------------------------------


def evaluate(ctx: Context, state: State, samples: int) -> EvalReport:
    """Held-out loss of the base, fine-tuned and previous models; end of turn; `samples` generations."""
    evaluation.require_fine_tuned(state, "model_dir")
    recorded = StateView(state)
    submit = recorded.submit
    fine_dir = Path(submit.need("model_dir"))
    device = recorded.check_compute.device or "cpu"
    base_dir, tokenizer, held, params = _setup(ctx, recorded)
    split = ctx.cfg.data.test_split
    files = prepared_files(state)
    if held is None:
        raise UsageError(f"there is no held-out split {split!r} to evaluate on", hint="set data.test_split")
    conversations = held_out(Path(files[split]["path"]), 64)
    report = EvalReport(
        split=split,
        conversations=len(held.examples),
        losses=[],
        stop=None,
        base_stop=None,
        samples=[],
        generation={
            "do_sample": False,
            "max_new_tokens": ctx.cfg.score.max_new_tokens,
            "seed": ctx.cfg.score.seed,
        },
        job_id=submit.job_id,
    )
    chosen = conversations[:samples]
    turns = [t for t in (_first_turn(m) for m in chosen) if t is not None]
    replies: dict[str, list[str]] = {}
    previous = previous_version(ctx, model_name(ctx, recorded), submit.mlflow_run_id)
    phases = 6 + (previous is not None)  # per model: loss, end-of-turn check, generations
    with ctx.ui.progress("evaluating", total=phases, unit="phases") as task:
        for label, folder in (("base", base_dir), ("fine-tuned", fine_dir)):
            done = len(report.losses) * 3
            task.update(done, info=f"{label}: held-out loss on {len(held.examples)} conversations")
            model = load_model(folder, device)
            loss = heldout_loss(model, tokenizer, held, device)
            report.losses.append(ModelLoss(label, _what(ctx, label, folder, submit), loss, "computed here"))
            task.update(done + 1, info=f"{label}: loss {loss:.3f}; end-of-turn check")
            check = stop_check(model, tokenizer, folder, conversations)
            if label == "base":
                report.base_stop = check
            else:
                report.stop = check
            task.update(done + 2, info=f"{label}: {len(turns)} generations")
            replies[label] = _replies(model, tokenizer, folder, turns, ctx.cfg.score.max_new_tokens)
            del model
        if previous is not None:
            task.update(6, info=f"previous: {previous.name} v{previous.version}, held-out loss")
            loss, source = _previous_loss(ctx, previous, tokenizer, held, device)
            report.losses.append(ModelLoss("previous", f"{previous.name} v{previous.version}", loss, source))
        task.update(phases, info="done")
    for n, (prompt, reply) in enumerate(turns):
        report.samples.append(
            Sample(prompt[-1]["content"], reply, {label: r[n] for label, r in replies.items()})
        )
    report.gate = _gate_preview(ctx, report, previous)
    job_metrics = _job_figures(ctx, submit)
    if job_metrics:
        report.notes.append(job_metrics)
    return report


def _what(ctx: Context, label: str, folder: Path, submit: SubmitOutputs) -> str:
    if label == "base":
        return str(ctx.cfg.model.name)
    return f"job {submit.job_id}"


def _replies(
    model: Any,
    tokenizer: Any,
    folder: Path,
    turns: list[tuple[list[dict[str, str]], str]],
    max_new_tokens: int,
) -> list[str]:
    stop = stop_token_ids(tokenizer, folder)
    prompts = [_prompt_text(tokenizer, prompt) for prompt, _ in turns]
    return [
        tokenizer.decode(ids, skip_special_tokens=True).strip()
        for ids in _greedy(model, tokenizer, prompts, max_new_tokens, stop)
    ]


def _gate_preview(ctx: Context, report: EvalReport, previous: Any) -> GateDecision:
    """What `ftctl register` would decide with these numbers."""
    base, fine, prev = report.loss("base"), report.loss("fine-tuned"), report.loss("previous")
    return decide(
        ctx.cfg.register_.gate,
        fine.loss if fine else None,
        base.loss if base else None,
        prev.loss if prev else None,
        None if previous is None else str(previous.version),
    )


def _job_figures(ctx: Context, submit: SubmitOutputs) -> str | None:
    """The job's own eval_loss before and after training, for comparison with the figures above."""
    start = base_loss_from_metrics(ctx, submit.mlflow_run_id)
    end = submit.eval_loss
    if start is None or end is None or not math.isfinite(float(end)):
        return None
    return f"the job's own eval_loss: {start:.4f} at step 0, {float(end):.4f} at the end"
