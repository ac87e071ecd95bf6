"""The stage contract: what every backend's implementation of a stage provides, and what it is given.

A backend (ftctl.backends.<name>) implements each of the nine stages as a module that satisfies
`StageImpl`; its `BACKEND` object lists them, declares the optional capabilities it has, and provides
the hooks that commands outside the pipeline use (the endpoint for chat/credentials, the metrics).
mypy checks every implementation against the Protocol where the backend builds its table.

This module is backend-neutral: it imports no backend and not the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ftctl.errors import UsageError

if TYPE_CHECKING:
    from ftctl.chat import Endpoint
    from ftctl.context import Context
    from ftctl.evaluation import EvalReport
    from ftctl.metrics import RunMetrics
    from ftctl.plan import Plan

Outputs = dict[str, Any]
State = dict[str, Any]


@dataclass(frozen=True)
class RunOptions:
    """Per-command options the runner passes to a stage (the Context itself never changes)."""

    force: bool = False
    wait: bool = True  # False with `--no-wait`: start long-running work, record its id, return
    dry_run: bool = False  # show what would be created; send nothing that creates, record nothing
    compute: bool = False  # `teardown --compute`: also delete the cluster ftctl created
    plan: bool = True  # submit checks the plan first (tokens, memory); False with `submit --no-plan`
    skip_gate: bool = False  # `register --force`: register even a model the promotion gate refuses


@dataclass
class StageCall:
    """One attempt of one stage: what it is given besides the Context.

    `recorded` holds what an interrupted attempt saved (a job id, a server pid), so the stage can
    re-attach instead of starting again; `checkpoint` saves partial outputs into the state file before
    the stage waits on something long-lived.
    """

    stage: str
    state: State
    options: RunOptions = RunOptions()
    recorded: Outputs = field(default_factory=dict)
    checkpoint: Callable[[Outputs], None] = lambda outputs: None

    def outputs(self, stage: str) -> Outputs:
        """The recorded outputs of another stage."""
        return dict(self.state.get("stages", {}).get(stage, {}).get("outputs") or {})


class StageImpl(Protocol):
    """One stage on one backend."""

    def run(self, ctx: Context, call: StageCall) -> Outputs:
        """Do the work; return the outputs (ids, names, paths, URLs, counts, hashes)."""
        ...

    def inputs(self, ctx: Context, state: State) -> dict[str, Path]:
        """label -> path of the files whose content the stage reads (part of its fingerprint)."""
        ...

    def output_files(self, ctx: Context, outputs: Outputs) -> dict[str, Path]:
        """label -> path of the files the stage produced; their signatures are recorded when it
        succeeds, and a stage whose outputs are gone or changed is stale (DVC's `outs`)."""
        ...

    def alive(self, ctx: Context, outputs: Outputs) -> bool:
        """Whether the long-lived thing the stage started (an endpoint, a running job) is up; True if
        none. The runner asks it of a live stage that succeeded, and of a running record nobody runs."""
        ...

    def retire(self, ctx: Context, outputs: Outputs) -> None:
        """Stop what a previous attempt started, before the stage runs again."""
        ...

    def summary(self, outputs: Outputs) -> str:
        """Key outputs in a few words, for `ftctl status`."""
        ...


# Optional capabilities: a command that needs one on a backend that lacks it says so, in one place.
METRICS = "metrics"
ENDPOINT = "endpoint"  # chat, credentials, score --file
LIVE_KINDS = ("job", "endpoint")  # what Hooks.live reports and Hooks.stop_live stops
DRY_RUN = "dry-run"
LIST_MODELS = "list-models"
CLUSTER = "cluster"  # a compute cluster ftctl may have created (teardown --compute)
LOGS = "logs"  # the fine-tuning job's log, step by step
PLAN = "plan"  # ftctl plan: token statistics, run size, memory and time before submitting
EVALUATE = "evaluate"  # ftctl evaluate: held-out loss of base / fine-tuned / previous, generations

CAPABILITY_COMMANDS = {
    METRICS: "ftctl metrics",
    ENDPOINT: "ftctl chat, ftctl credentials and ftctl score --file",
    DRY_RUN: "--dry-run",
    LIST_MODELS: "ftctl pick-model --list",
    CLUSTER: "teardown --compute",
    LOGS: "ftctl logs",
    PLAN: "ftctl plan",
    EVALUATE: "ftctl evaluate",
}

LogWriter = Callable[[str], None]  # receives the log's lines, one at a time, without their newline


class Hooks(Protocol):
    """What commands outside the pipeline ask of a backend."""

    def endpoint(self, ctx: Context, state: State, command: str) -> Endpoint:
        """The live endpoint `ftctl deploy` started; UsageError naming what to run when there is none."""
        ...

    def metrics(self, ctx: Context, state: State, run: str | None) -> RunMetrics:
        """The fine-tuning job's metric histories."""
        ...

    def list_models(self, ctx: Context, show_all: bool) -> list[dict[str, Any]]:
        """The registry's models (name, latest_version, task, description)."""
        ...

    def live(self, ctx: Context, state: State | None) -> list[dict[str, Any]]:
        """The processes ftctl started that still run (training jobs, endpoints), from records kept
        outside the state file; each with "recorded": whether `state` (None: unreadable) knows it."""
        ...

    def stop_live(
        self, ctx: Context, kinds: tuple[str, ...], unrecorded_in: State | None = None
    ) -> list[str]:
        """Stop live processes of `kinds` ("job", "endpoint"); with `unrecorded_in`, only those that
        state does not record. Returns what was stopped, described. Called under the workspace lock."""
        ...

    def logs(
        self, ctx: Context, state: State, step: str | None, follow: bool, write: LogWriter
    ) -> dict[str, Any]:
        """Pass the log of one step of the job `ftctl submit` recorded (default: the fine-tuning step)
        to `write`, line by line; with `follow`, keep passing new lines until the step ends. Returns
        what was shown, the same keys on every backend: job, job_status, step, step_status, steps
        ([{name, status}], in the job's order) and source (where the log was read). UsageError (exit 2)
        for a step the job does not have, naming those it has."""
        ...


class QualityHooks(Protocol):
    """What `ftctl plan` and `ftctl evaluate` ask of a backend (capabilities PLAN and EVALUATE)."""

    def plan(self, ctx: Context, state: State, calibrate: bool) -> Plan:
        """What submit would do: token statistics, run size, memory and (calibrated) time."""
        ...

    def evaluate(self, ctx: Context, state: State, samples: int) -> EvalReport:
        """Held-out loss of the base, fine-tuned and previously registered models; `samples`
        side-by-side generations; whether the fine-tuned model stops."""
        ...


@dataclass(frozen=True)
class Missing:
    """Why a backend lacks a capability, and what to do instead."""

    message: str
    hint: str | None = None


@dataclass(frozen=True)
class Backend:
    name: str
    stages: Mapping[str, StageImpl]
    capabilities: frozenset[str]
    hooks: Hooks
    missing: Mapping[str, Missing] = field(default_factory=dict)  # capability -> why it is missing
    quality: QualityHooks | None = None  # plan and evaluate, where the backend has them

    def stage(self, name: str) -> StageImpl:
        return self.stages[name]

    def require(self, capability: str) -> Hooks:
        """The hooks, if this backend has `capability`; otherwise a UsageError saying it does not."""
        if capability not in self.capabilities:
            why = self.missing.get(capability)
            if why is None:
                what = CAPABILITY_COMMANDS.get(capability, capability)
                why = Missing(f"{what}: not available on --backend {self.name}")
            raise UsageError(why.message, hint=why.hint)
        return self.hooks

    def require_quality(self, capability: str) -> QualityHooks:
        """The plan/evaluate hooks, if this backend has `capability` (PLAN, EVALUATE)."""
        self.require(capability)
        if self.quality is None:
            raise UsageError(
                f"{CAPABILITY_COMMANDS.get(capability, capability)}: not available on --backend {self.name}"
            )
        return self.quality


# Defaults for the parts of the contract a stage has no use for. A stage module re-exports the ones it
# needs (`from ftctl.stages.contract import no_inputs as inputs`), so every module is complete.


def no_inputs(ctx: Context, state: State) -> dict[str, Path]:
    return {}


def no_output_files(ctx: Context, outputs: Outputs) -> dict[str, Path]:
    return {}


def always_alive(ctx: Context, outputs: Outputs) -> bool:
    return True


def nothing_to_retire(ctx: Context, outputs: Outputs) -> None:
    return None


def no_summary(outputs: Outputs) -> str:
    return ""
