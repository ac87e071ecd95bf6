"""The promotion gate and `ftctl evaluate` on Azure ML, from what the job itself measured.

The fine-tuned model stays in the workspace, so nothing is loaded or computed here:
- the fine-tuned model's held-out loss is the last eval_loss (after step 0) the job's
  chat_completion_finetune step logged to the workspace's MLflow: the run `ftctl metrics` shows;
- the base model's is the eval_loss that step logged at step 0, when the job evaluated before training
  (unknown otherwise: it cannot be computed here);
- the previous registered version is the newest version of the same model name not registered from
  this job; its figure is its `ftctl.eval.loss` tag, compared only when its `ftctl.eval.setup` tag
  matches this job's held-out setup (the test file, max_seq_length, the eval batch size, the base
  model), as on the local backend.

The decision itself, the refusal and the tags are ftctl.evaluation's, shared with the local backend.
azure.* and mlflow are imported inside functions (ftctl.backends.azureml.hooks, .client).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import evaluation
from ftctl.backends.azureml.backend import azure
from ftctl.errors import FtctlError, StageFailed, UsageError
from ftctl.evaluation import EvalReport, GateDecision, ModelLoss, decide, heldout_setup, tagged_loss
from ftctl.records import StateView
from ftctl.stages.contract import StageCall
from ftctl.stages.shared import model_name, prepared_files

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import State

# chat_completion_pipeline's defaults for the inputs that change the evaluation (azureml-assets 0.0.82):
# a job that did not set them evaluated with these.
EVAL_DEFAULTS = {"max_seq_length": -1, "per_device_eval_batch_size": 1}
SOURCE = "the job's metrics"
NO_GENERATIONS = (
    "no side-by-side generations or end-of-turn check on --backend azureml: they need the model on "
    "this machine (the losses are the job's own eval_loss); `ftctl deploy` and `ftctl chat` to try it"
)


@dataclass
class Figures:
    """What the gate and `ftctl evaluate` compare, as the job and the workspace recorded it."""

    job: str
    model: str  # the registered model's name
    fine_tuned: float | None  # the last eval_loss after step 0 (NaN: the evaluation diverged)
    base: float | None  # the eval_loss at step 0, when the job evaluated before training
    previous: Any | None  # the newest version of `model` not from this job (an azure-ai-ml Model)
    previous_loss: float | None  # its ftctl.eval.loss tag, when evaluated the same way
    setup: str | None  # heldout_setup() of this job's held-out set (None: the job had no test file)

    @property
    def previous_version(self) -> str | None:
        """The previous version compared with (None when there is none, or it is not comparable)."""
        if self.previous is None or self.previous_loss is None:
            return None
        return str(self.previous.version)

    def not_compared(self) -> str | None:
        """Why the previous version is not compared with (None when it is)."""
        if self.previous is None:
            return f"no earlier version of {self.model}"
        if self.previous_loss is not None:
            return None
        version = f"version {self.previous.version} of {self.model}"
        tags = dict(getattr(self.previous, "tags", None) or {})
        if "ftctl.eval.loss" not in tags:
            return f"{version} has no ftctl.eval.loss tag"
        if tags.get("ftctl.eval.setup") != self.setup:
            return (
                f"{version} was evaluated differently (its ftctl.eval.setup tag: other test data, "
                "max_seq_length, eval batch size or base model)"
            )
        return f"{version} has a loss that is not a number ({tags['ftctl.eval.loss']})"

    def skipped_version(self) -> str | None:
        """Why an earlier version is left out of the comparison (None: there is none, or it is in)."""
        return None if self.previous is None else self.not_compared()


NO_BASE = "the job logged no eval_loss at step 0 (no evaluation before training)"
NO_EVAL = "the job logged no eval_loss after training (no test file, or evaluation_strategy: disable)"


def setup_digest(ctx: Context, recorded: StateView) -> str | None:
    """heldout_setup() of the job's held-out set: the prepared test split submit uploaded, the job's
    eval inputs (the component's defaults where it set none) and the base model's registry id."""
    submit = recorded.submit
    files = prepared_files(recorded.state)
    split = ctx.cfg.data.test_split
    if not submit.test_file or split not in files:
        return None
    params = {**EVAL_DEFAULTS, **(submit.params or {})}
    picked = recorded.pick_model
    base = str(picked.id or picked.name or ctx.cfg.model.name)
    return heldout_setup(Path(files[split]["path"]), files[split].get("sha256"), params, base)


def _from_job(version: Any, job: str) -> bool:
    tags = dict(getattr(version, "tags", None) or {})
    return tags.get("ftctl.job_id") == job or getattr(version, "job_name", None) == job


def _age(version: Any) -> tuple[float, int]:
    """Sort key, oldest first: when the version was created, then its number (versions ftctl registers
    are timestamps; two created in the same second)."""
    created = getattr(getattr(version, "creation_context", None), "created_at", None)
    stamp = created.timestamp() if isinstance(created, datetime) else 0.0
    number = str(version.version)
    return stamp, int(number) if number.isdigit() else 0


def previous_version(ctx: Context, name: str, job: str) -> Any | None:
    """The newest version of `name` in the workspace that was not registered from `job`."""
    from azure.core.exceptions import ResourceNotFoundError

    from ftctl.backends.azureml.client import calling

    with calling(f"listing the versions of model {name}"):
        try:
            versions = list(azure(ctx).workspace.models.list(name=name))
        except ResourceNotFoundError:  # no version of that name yet
            versions = []
    return max((v for v in versions if not _from_job(v, job)), key=_age, default=None)


def figures(ctx: Context, recorded: StateView, needed_by: str) -> Figures:
    """Read the job's eval_loss history (MLflow) and the previous version (the workspace's models)."""
    from ftctl.backends.azureml import hooks

    job = str(recorded.submit.need("job_name"))
    losses = hooks.eval_losses(ctx, job, needed_by)
    after = [value for step, value in losses if step > 0]
    setup = setup_digest(ctx, recorded)
    name = model_name(ctx, recorded)
    previous = previous_version(ctx, name, job)
    tagged = None if previous is None else tagged_loss(previous, setup)
    return Figures(
        job=job,
        model=name,
        fine_tuned=after[-1] if after else None,
        base=next((value for step, value in losses if step == 0), None),
        previous=previous,
        previous_loss=tagged if tagged is not None and math.isfinite(tagged) else None,
        setup=setup,
    )


def judge(policy: str, found: Figures, forced: bool) -> GateDecision:
    """decide() on the figures; a skip says what was missing, in Azure ML's terms."""
    decision = decide(
        policy, found.fine_tuned, found.base, found.previous_loss, found.previous_version, forced
    )
    if decision.result == "skipped":
        if found.fine_tuned is None:
            decision.reasons = [NO_EVAL]
        else:
            decision.reasons = [f"nothing to compare with: {NO_BASE}, and {found.not_compared()}"]
    return decision


def _unreadable(exc: FtctlError, job: str) -> FtctlError:
    """The gate cannot read the job's metrics: the same kind of error, saying it was the gate."""
    kind = type(exc) if isinstance(exc, UsageError) else StageFailed
    hint = "register.gate: off registers without reading them"
    return kind(
        f"register's gate (register.gate: improve) cannot read the metrics of job {job}: {exc.message}",
        hint=f"{exc.hint}; {hint}" if exc.hint else hint,
    )


def check_gate(ctx: Context, call: StageCall) -> tuple[GateDecision, dict[str, str]]:
    """register's gate: the decision (StageFailed, exit 1, when it refuses) and the registered
    version's tags. With register.gate: off nothing is read."""
    policy = ctx.cfg.register_.gate
    if policy == "off":
        decision = decide("off", None, None)
        return evaluation.enforce(decision, ctx.ui), decision.tags()
    job = str(call.upstream.submit.job_name)
    with ctx.ui.spinner("reading the job's held-out loss and the previous version", quiet=True):
        try:
            found = figures(ctx, call.upstream, "reading them")
        except FtctlError as exc:
            raise _unreadable(exc, job) from None
    decision = judge(policy, found, call.options.skip_gate)
    note = found.skipped_version()
    if note and decision.result != "skipped":  # (a skip says it in its reason)
        ctx.ui.info(f"  not compared: {note}")
    return evaluation.enforce(decision, ctx.ui), evaluation.gate_tags(decision, found.setup)


# --- ftctl evaluate --------------------------------------------------------------------------------------


def _losses(ctx: Context, recorded: StateView, found: Figures) -> list[ModelLoss]:
    base_model = str(recorded.pick_model.name or ctx.cfg.model.name)
    losses = []
    if found.base is not None:
        losses.append(ModelLoss("base", base_model, found.base, f"{SOURCE} (eval_loss at step 0)"))
    losses.append(ModelLoss("fine-tuned", f"job {found.job}", found.fine_tuned, SOURCE))
    if found.previous_version is not None:
        version = found.previous_version
        losses.append(
            ModelLoss(
                "previous", f"{found.model} v{version}", found.previous_loss, f"tag of version {version}"
            )
        )
    return losses


def _notes(found: Figures) -> list[str]:
    notes = []
    if found.base is None:
        notes.append(f"{NO_BASE}: the base model's held-out loss is unknown")
    skipped = found.skipped_version()
    if skipped:
        notes.append(f"not compared: {skipped}")
    return [*notes, NO_GENERATIONS]


def evaluate(ctx: Context, state: State, samples: int) -> EvalReport:
    """`ftctl evaluate` on Azure ML: the job's own held-out losses, the previous version's tag and what
    register's gate would decide. `samples` is not used: there are no generations here."""
    from ftctl.backends.azureml import hooks

    hooks.check_backend(ctx, state)
    evaluation.require_fine_tuned(state, "job_name")
    recorded = StateView(state)
    found = figures(ctx, recorded, "`ftctl evaluate` on Azure ML")
    split = ctx.cfg.data.test_split
    return EvalReport(
        split=split,
        conversations=int(prepared_files(state).get(split, {}).get("rows") or 0),
        losses=_losses(ctx, recorded, found),
        stop=None,
        base_stop=None,
        samples=[],
        generation={},
        job_id=found.job,
        gate=judge(ctx.cfg.register_.gate, found, forced=False),
        notes=_notes(found),
    )
