"""Evaluation and the promotion gate, backend-neutral: held-out loss of the base, fine-tuned and
previously registered models, whether the fine-tuned model stops, side-by-side generations, the gate's
decision, and how all of that is shown (a table, JSON, a Markdown report with figures).

A backend measures (the local backend loads the models; Azure ML reads the job's metrics) and fills
these records in; what the gate does with the numbers (refuse, warn, tag the version) is the same on
both and lives here. matplotlib is imported inside the functions that draw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import state as st
from ftctl.errors import StageFailed, UsageError

if TYPE_CHECKING:
    from ftctl.ui import UI

STOP_MESSAGE = "the model does not stop: end-of-turn tokens missing from the labels?"
# Its replies still stop, but the end of turn is fading (the early sign of the same bug).
FADING_MESSAGE = "the model is unlearning to end its turn: end-of-turn tokens missing from the labels?"
# A reply that ends its turn: most greedy generations stop before their limit...
STOP_SHARE = 0.5
# ...and the model gives the end-of-turn token at least this probability (median over held-out
# conversations) right after the dataset's own reply. A model trained without the token in its labels
# loses it quickly (bench/README.md: 0.98 -> 0.04 on the built-in model), well before its greedy
# replies run on.
END_PROBABILITY_MIN = 0.3
# "Better" on held-out loss: lower by more than this. Two computations of the same model's loss (the
# trainer's LoRA model, the merged one here) differ by ~1e-5; an identical re-run is not an improvement.
MIN_IMPROVEMENT = 1e-4


@dataclass
class ModelLoss:
    label: str  # base | fine-tuned | previous
    model: str  # what was evaluated: a name, a folder, a registry URI
    loss: float | None  # mean held-out loss on assistant tokens (as the trainer's eval_loss)
    source: str  # how it was obtained: "computed here", "the job's metrics", "tag of version 3"

    @property
    def perplexity(self) -> float | None:
        if self.loss is None:
            return None
        return math.exp(self.loss) if self.loss < 700 else float("inf")


@dataclass
class StopCheck:
    """Whether a model ends its turn: greedy replies to held-out prompts, and the end-of-turn
    probability right after the dataset's replies."""

    prompts: int
    stopped: int  # replies that ended with an end-of-turn (or eos) token before their limit
    max_new_tokens: list[int]  # each prompt's limit: twice its reference reply, plus 16 (32..1024)
    end_token: str  # the tokens the endpoint stops on
    end_probability: float | None  # median over held-out conversations
    lengths: list[int] = field(default_factory=list)  # tokens generated per prompt
    labels_end_turn: bool | None = None  # whether the trainer's labels end a reply with a stop token

    @property
    def ok(self) -> bool:
        if self.labels_end_turn is False:
            return False
        if self.prompts and self.stopped <= self.prompts * STOP_SHARE:
            return False
        return self.end_probability is None or self.end_probability >= END_PROBABILITY_MIN

    @property
    def message(self) -> str | None:
        """None when the model ends its turn; else what to say."""
        if self.ok:
            return None
        if self.labels_end_turn is False or (self.prompts and self.stopped <= self.prompts * STOP_SHARE):
            return STOP_MESSAGE
        return FADING_MESSAGE

    def describe(self) -> str:
        text = f"{self.stopped}/{self.prompts} greedy replies end their turn"
        if self.end_probability is not None:
            text += f", P({self.end_token}) after the reference reply {self.end_probability:.2f}"
        if self.labels_end_turn is False:
            text += f"; the training labels end no reply with {self.end_token}"
        return text


@dataclass
class Sample:
    prompt: str  # the last user message
    reference: str  # the dataset's reply
    replies: dict[str, str]  # label -> greedy reply


@dataclass
class GateDecision:
    policy: str  # improve | off
    result: str  # passed | refused | forced | off | skipped | same (the model is registered already)
    reasons: list[str]
    fine_tuned: float | None = None
    base: float | None = None
    previous: float | None = None
    previous_version: str | None = None

    def tags(self) -> dict[str, str]:
        """The registered version's tags (MLflow / Azure ML tags are strings)."""
        tags = {"ftctl.gate": self.policy, "ftctl.gate.result": self.result}
        for name, value in (
            ("loss", self.fine_tuned),
            ("base_loss", self.base),
            ("previous_loss", self.previous),
        ):
            if value is not None:
                tags[f"ftctl.eval.{name}"] = repr(float(value))
        if self.previous_version is not None:
            tags["ftctl.eval.previous_version"] = self.previous_version
        return tags

    def describe(self) -> str:
        numbers = [f"fine-tuned {_loss(self.fine_tuned)}", f"base {_loss(self.base)}"]
        if self.previous is not None:
            numbers.append(f"version {self.previous_version} {_loss(self.previous)}")
        return (
            f"gate ({self.policy}): {self.result}: held-out loss "
            + ", ".join(numbers)
            + (f" ({'; '.join(self.reasons)})" if self.reasons else "")
        )


def _loss(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def decide(
    policy: str,
    fine_tuned: float | None,
    base: float | None,
    previous: float | None = None,
    previous_version: str | None = None,
    forced: bool = False,
) -> GateDecision:
    """The promotion gate: with `improve`, the fine-tuned model's held-out loss must be lower than the
    base model's and than the previous registered version's (when there is one to compare). A loss
    that is not a number (a diverged job) is never better; a previous version whose own loss is not a
    number (registered with --force) is not compared with."""
    if previous is not None and not math.isfinite(previous):
        previous, previous_version = None, None
    decision = GateDecision(policy, "passed", [], fine_tuned, base, previous, previous_version)
    if policy == "off":
        decision.result = "off"
        return decision
    if fine_tuned is None:
        decision.result = "skipped"
        decision.reasons.append("no held-out loss (no test split)")
        return decision
    worse = []
    if base is not None and not fine_tuned < base - MIN_IMPROVEMENT:  # NaN and inf fail too
        worse.append(f"not better than the base model ({_loss(fine_tuned)} >= {_loss(base)})")
    if previous is not None and not fine_tuned < previous - MIN_IMPROVEMENT:
        worse.append(f"not better than version {previous_version} ({_loss(fine_tuned)} >= {_loss(previous)})")
    if base is None and previous is None:
        decision.result = "skipped"
        decision.reasons.append("nothing to compare with")
        return decision
    if worse:
        decision.reasons.extend(worse)
        decision.result = "forced" if forced else "refused"
    return decision


# --- the gate in register, the same on every backend -------------------------------------------------

GATE_HINT = (
    "`ftctl evaluate` compares the models; `ftctl register --force` registers it anyway "
    "(recorded as forced); register.gate: off turns the check off"
)


def require_fine_tuned(state: dict[str, Any], output: str) -> None:
    """UsageError (exit 2) unless submit succeeded and recorded `output` (where its model is)."""
    rec = st.record(state, "submit")
    if rec["status"] != st.SUCCEEDED or not (rec.get("outputs") or {}).get(output):
        raise UsageError(
            f"there is no fine-tuned model to evaluate: submit is {rec['status']}",
            hint="run `ftctl submit` (or `ftctl run --to submit`) first",
        )


def heldout_setup(
    path: Path, sha256: str | None, params: dict[str, Any], base_model: str | None = None
) -> str:
    """A digest of what makes two held-out losses comparable: the data, max_seq_length, the number
    of conversations and the batch size; and, where given, the base model (Azure ML's registry serves
    newer versions of a model under the same name). Stored as a version's `ftctl.eval.setup` tag: a
    later version compares its loss with that version's tag only when the digests match."""
    setup = {
        "data": sha256 or st.file_signature(path),
        "seq": int(params["max_seq_length"]),
        "limit": params.get("max_eval_samples"),
        "batch": int(params["per_device_eval_batch_size"]),
    }
    if base_model is not None:  # absent from the local digest, so the tags it already wrote still match
        setup["base"] = base_model
    return st.digest(setup)


def tagged_loss(version: Any, setup: str | None) -> float | None:
    """A registered version's held-out loss from its tags, when it was evaluated the same way."""
    tags = dict(getattr(version, "tags", {}) or {})
    if setup is None or tags.get("ftctl.eval.setup") != setup:
        return None
    try:
        return float(tags["ftctl.eval.loss"])
    except (KeyError, ValueError):
        return None


def gate_tags(decision: GateDecision, setup: str | None) -> dict[str, str]:
    """The gate's numbers as tags of the registered version, with what makes them comparable later."""
    tags = decision.tags()
    if decision.fine_tuned is not None and setup is not None:
        tags["ftctl.eval.setup"] = setup
    return tags


def enforce(decision: GateDecision, ui: UI) -> GateDecision:
    """register's side of the gate: a refusal is StageFailed (exit 1) with the numbers; registering past
    it (--force) is a warning; any other verdict one line."""
    if decision.result == "refused":
        raise StageFailed(
            "register refused by the gate (register.gate: improve): the fine-tuned model is "
            + "; ".join(decision.reasons),
            hint=GATE_HINT,
        )
    if decision.result == "forced":
        ui.warn(f"registering past the gate (--force): the fine-tuned model is {'; '.join(decision.reasons)}")
    else:
        ui.info(f"  {decision.describe()}")
    return decision


@dataclass
class EvalReport:
    split: str
    conversations: int  # held-out conversations the losses are over
    losses: list[ModelLoss]
    stop: StopCheck | None  # the fine-tuned model
    base_stop: StopCheck | None
    samples: list[Sample]
    generation: dict[str, Any]  # the settings of the sample generations
    job_id: str | None = None
    gate: GateDecision | None = None
    notes: list[str] = field(default_factory=list)

    def loss(self, label: str) -> ModelLoss | None:
        return next((m for m in self.losses if m.label == label), None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for entry, model in zip(data["losses"], self.losses, strict=True):
            entry["perplexity"] = _finite(model.perplexity)
        if self.stop is not None:
            data["stop"]["ok"] = self.stop.ok
            data["stop"]["message"] = self.stop.message
        return data


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --- showing it ------------------------------------------------------------------------------------


def _loss_rows(report: EvalReport) -> list[list[str]]:
    base = report.loss("base")
    rows = []
    for m in report.losses:
        delta = ""
        if m.label != "base" and base is not None and base.loss is not None and m.loss is not None:
            delta = f"{m.loss - base.loss:+.4f}"
        ppl = m.perplexity
        rows.append(
            [
                m.label,
                _loss(m.loss),
                "n/a" if ppl is None else ("inf" if not math.isfinite(ppl) else f"{ppl:.2f}"),
                delta,
                m.model,
                m.source,
            ]
        )
    return rows


LOSS_HEADERS = ["MODEL", "LOSS", "PERPLEXITY", "VS BASE", "WHAT", "FROM"]


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def render(report: EvalReport) -> str:
    from ftctl.ui import table

    lines = [
        f"held-out loss on {report.split} ({report.conversations} conversations, assistant tokens only):",
        table(_loss_rows(report), LOSS_HEADERS),
    ]
    if report.stop is not None:
        base = f" (base: {report.base_stop.describe()})" if report.base_stop is not None else ""
        lines.append(f"end of turn: {report.stop.describe()}{base}")
        if report.stop.message:
            lines.append(f"warning: {report.stop.message}")
    if report.gate is not None:
        lines.append(f"if registered now: {report.gate.describe()}")
    if report.samples:
        g = report.generation
        lines.append(f"samples (greedy, max_new_tokens {g.get('max_new_tokens')}, seed {g.get('seed')}):")
        for i, sample in enumerate(report.samples, 1):
            lines.append(f"  [{i}] user: {_short(sample.prompt)}")
            for label, reply in sample.replies.items():
                lines.append(f"      {label + ':':<12} {_short(reply)}")
            lines.append(f"      {'reference:':<12} {_short(sample.reference)}")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


# --- the report ------------------------------------------------------------------------------------


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _loss_figure(report: EvalReport, path: Path) -> Path:
    from matplotlib.figure import Figure

    shown = [m for m in report.losses if m.loss is not None and math.isfinite(m.loss)]
    fig = Figure(figsize=(7, 3.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    colors = {"base": "tab:gray", "fine-tuned": "tab:blue", "previous": "tab:orange"}
    bars = ax.bar(
        [m.label if m.label != "previous" else f"previous ({m.model.rsplit(' ', 1)[-1]})" for m in shown],
        [float(m.loss or 0.0) for m in shown],
        color=[colors.get(m.label, "tab:green") for m in shown],
    )
    ax.bar_label(bars, fmt="%.4f", fontsize=9)
    ax.set_ylabel("held-out loss\n(assistant tokens)")
    ax.set_title(f"held-out loss on {report.split} ({report.conversations} conversations), lower is better")
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, format="png")
    return path


def _lengths_figure(plan: Any, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6), dpi=110, layout="constrained")
    ax = fig.subplots()
    names = ["p50", "p90", "p99", "max"]
    width = 0.8 / max(1, len(plan.splits))
    for k, split in enumerate(plan.splits):
        values = [getattr(split, n) for n in names]
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, values, width=width, label=split.split)
    seq = plan.settings.get("max_seq_length")
    if seq:
        ax.axhline(seq, color="tab:red", linestyle="--", linewidth=1.2, label=f"max_seq_length {seq}")
    ax.set_xticks([i + width * (len(plan.splits) - 1) / 2 for i in range(len(names))], names)
    ax.set_ylabel("conversation length (tokens)")
    ax.set_title("conversation lengths with the model's chat template")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.savefig(path, format="png")
    return path


def _plan_section(plan: Any) -> list[str]:
    from ftctl.plan import SPLIT_HEADERS, _split_rows, fmt_bytes, fmt_seconds

    lines = ["## The plan", "", _md_table(SPLIT_HEADERS, _split_rows(plan)), ""]
    lines.append(
        "ASSISTANT: share of tokens trained on; CUT: conversations longer than max_seq_length "
        f"({plan.settings.get('max_seq_length')}); LOST: assistant tokens cut."
    )
    lines += ["", "![conversation lengths](token_lengths.png)", ""]
    run, memory, time = plan.run, plan.memory, plan.time
    if run is not None:
        lines.append(
            f"- run: {run.steps:,} optimizer steps, effective batch {run.effective_batch} "
            f"({run.per_device_batch} x {run.accumulation} x {run.devices}), {run.tokens_per_epoch:,} tokens "
            f"per epoch ({run.trained_tokens_per_epoch:,} trained)"
        )
    if memory is not None:
        limit = f" of {fmt_bytes(memory.limit_bytes)} ({memory.limit_source})" if memory.limit_bytes else ""
        lines.append(f"- memory: about {fmt_bytes(memory.total_bytes)}{limit}: {memory.verdict}")
    if time is not None:
        lines.append(f"- time: about {fmt_seconds(time.train_s)} of training ({time.source})")
    return [*lines, ""]


def write_report(directory: Path, report: EvalReport, plan: Any = None, metrics: Any = None) -> Path:
    """A self-contained report: DIR/report.md and the PNGs it shows (loss curves, held-out loss,
    conversation lengths). `plan` (ftctl.plan.Plan) and `metrics` (ftctl.metrics.RunMetrics) are
    optional sections."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"# Evaluation of job {report.job_id}", ""]
    if report.gate is not None:
        lines += [f"- if registered now: {report.gate.describe()}"]
    if report.stop is not None:
        verdict = "ends its turn" if report.stop.ok else f"does not: **{report.stop.message}**"
        lines += [f"- end of turn: the fine-tuned model {verdict} ({report.stop.describe()})"]
        if report.base_stop is not None:
            lines += [f"- end of turn, base model: {report.base_stop.describe()}"]
    lines += [f"- {n}" for n in report.notes]
    lines += ["", "## Held-out loss", "", _md_table(LOSS_HEADERS, _loss_rows(report)), ""]
    _loss_figure(report, directory / "eval_loss.png")
    lines += ["![held-out loss](eval_loss.png)", ""]
    if metrics is not None:
        from ftctl.metrics import describe_params, figure

        figure(metrics).savefig(directory / "loss_curves.png", format="png")
        lines += [
            "## Training",
            "",
            f"{metrics.run_name or metrics.run_id}: {describe_params(metrics.params)}",
            "",
        ]
        lines += ["![training and eval loss](loss_curves.png)", ""]
    if plan is not None and plan.splits:
        _lengths_figure(plan, directory / "token_lengths.png")
        lines += _plan_section(plan)
    if report.samples:
        g = report.generation
        lines += [
            "## Samples",
            "",
            f"Greedy replies (max_new_tokens {g.get('max_new_tokens')}, seed {g.get('seed')}) to held-out "
            "prompts, beside the dataset's reply.",
            "",
        ]
        for i, sample in enumerate(report.samples, 1):
            lines += [f"### {i}. {_short(sample.prompt, 80)}", "", f"**user:** {sample.prompt}", ""]
            for label, reply in sample.replies.items():
                lines += [f"**{label}:** {reply or '(empty)'}", ""]
            lines += [f"**reference:** {sample.reference}", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
