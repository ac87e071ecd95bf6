"""What a backend is: one class with the nine stages, the config keys they read, what it can do, and the
commands outside the pipeline (endpoint, metrics, logs, plan, evaluate, list-models, live processes).

A backend subclasses `Backend`, declares its `capabilities`, and overrides the methods of the
capabilities it has; a method it does not override raises `Unsupported` naming the command and what to
do instead. `__init_subclass__` checks the two agree, so a capability is never declared without its code.

A backend owns its handle (the local workspace's folders and MLflow stores; Azure ML's credential and
MLClients) and builds it on first use, so `ftctl --help` and `ftctl status` import nothing heavy.

This module is backend-neutral: it imports no backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from ftctl.errors import FtctlError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from ftctl.chat import Endpoint
    from ftctl.context import Context
    from ftctl.evaluation import EvalReport
    from ftctl.metrics import RunMetrics
    from ftctl.plan import Plan
    from ftctl.stages.contract import LogWriter, StageImpl, State


class Unsupported(UsageError):
    """A command asked a backend for something it does not have (exit 2, with what to do instead)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond the nine stages. A method capability is True exactly when the
    backend overrides the method of the same name; the flags (dry_run, cluster) have no method."""

    endpoint: bool = False  # ftctl chat, credentials, score --file
    metrics: bool = False
    logs: bool = False
    plan: bool = False
    evaluate: bool = False
    list_models: bool = False
    rotate_key: bool = False  # ftctl credentials --rotate
    export: bool = False  # ftctl export
    dry_run: bool = False  # --dry-run: show what would be created, create nothing
    cluster: bool = False  # teardown --compute: a compute cluster ftctl may have created
    loss_weights: bool = False  # training honours "weight": 0 on an assistant message (no loss on it)


METHOD_CAPABILITIES = (
    "endpoint",
    "metrics",
    "logs",
    "plan",
    "evaluate",
    "list_models",
    "rotate_key",
    "export",
)

# The command each capability serves, for the message when a backend lacks it.
COMMANDS = {
    "endpoint": "ftctl chat, ftctl credentials and ftctl score --file",
    "metrics": "ftctl metrics",
    "logs": "ftctl logs",
    "plan": "ftctl plan",
    "evaluate": "ftctl evaluate",
    "list_models": "ftctl pick-model --list",
    "rotate_key": "ftctl credentials --rotate",
    "export": "ftctl export",
    "dry_run": "--dry-run",
    "cluster": "teardown --compute",
    "loss_weights": '"weight": 0 on assistant messages',
}


class Backend(ABC):
    """One backend: built once per command by the Context (ftctl.backends.create)."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    # Config keys a stage reads on this backend beyond the neutral ones in ftctl.pipeline.STAGES (part of
    # its fingerprint, so changing one makes the stage stale).
    reads: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    # capability -> (message, hint) when this backend lacks it and has something better to say.
    unsupported: ClassVar[Mapping[str, tuple[str, str | None]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for capability in METHOD_CAPABILITIES:
            overridden = getattr(cls, capability) is not getattr(Backend, capability)
            if overridden != getattr(cls.capabilities, capability):
                raise TypeError(
                    f"{cls.__name__}: capability {capability} is "
                    f"{getattr(cls.capabilities, capability)} but its method is "
                    f"{'' if overridden else 'not '}overridden"
                )

    def __init__(self, ctx: Context, options: Mapping[str, Any] | None = None) -> None:
        """options: what a caller injects into the backend's handle (tests: Azure ML's transport)."""
        self.ctx = ctx
        self.options = dict(options or {})

    # --- the stages --------------------------------------------------------------------------------

    @property
    @abstractmethod
    def stages(self) -> Mapping[str, StageImpl]:
        """The nine stage implementations, in pipeline order."""

    def stage(self, name: str) -> StageImpl:
        return self.stages[name]

    # --- capabilities ------------------------------------------------------------------------------

    def has(self, capability: str) -> bool:
        return bool(getattr(self.capabilities, capability))

    def require(self, capability: str) -> None:
        """Unsupported (exit 2) unless this backend has `capability` (a Capabilities field name)."""
        if capability not in {f.name for f in fields(Capabilities)}:
            raise ValueError(f"unknown capability {capability!r}")
        if not self.has(capability):
            raise self._unsupported(capability)

    def _unsupported(self, capability: str) -> Unsupported:
        message, hint = self.unsupported.get(
            capability, (f"{COMMANDS[capability]}: not available on --backend {self.name}", None)
        )
        return Unsupported(message, hint=hint)

    # --- commands outside the pipeline (each raises Unsupported unless overridden) ------------------

    def endpoint(self, state: State, command: str) -> Endpoint:
        """The live endpoint `ftctl deploy` started; UsageError naming what to run when there is none."""
        raise self._unsupported("endpoint")

    def metrics(self, state: State, run: str | None) -> RunMetrics:
        """The fine-tuning job's metric histories (default: the job `ftctl submit` recorded)."""
        raise self._unsupported("metrics")

    def logs(self, state: State, step: str | None, follow: bool, write: LogWriter) -> dict[str, Any]:
        """Pass the log of one step of the recorded job to `write`, line by line; with `follow`, until
        the step ends. Returns the same keys on every backend: job, job_status, step, step_status, steps
        ([{name, status}], in the job's order) and source. UsageError for a step the job lacks."""
        raise self._unsupported("logs")

    def plan(self, state: State, calibrate: bool) -> Plan:
        """What submit would do: token statistics, run size, memory and (calibrated) time."""
        raise self._unsupported("plan")

    def evaluate(self, state: State, samples: int) -> EvalReport:
        """Held-out loss of the base, fine-tuned and previous models; side-by-side generations."""
        raise self._unsupported("evaluate")

    def list_models(self, show_all: bool) -> list[dict[str, Any]]:
        """The registry's models (name, latest_version, task, description)."""
        raise self._unsupported("list_models")

    def relocate(self, old: str, new: str, state: State) -> None:
        """The workspace moved from `old` to `new` (or is a copy of `old`): rewrite the paths this
        backend keeps outside the state file, and in `state` (in place) those ftctl.relocation cannot
        know, spelled in a form of the backend's own (ftctl.relocation rewrites plain paths and file://
        URIs in the state and ftctl's records). A backend whose records live in a service keeps none."""
        return None

    def export(self, state: State, fmt: str, out: Path, job: str | None) -> dict[str, Any]:
        """Write the registered version's model (or job `job`'s) to `out` in `fmt`, check it with an
        independent reader and return the figures (StageFailed, exit 1, when it differs)."""
        raise self._unsupported("export")

    def rotate_key(self, state: State) -> None:
        """Give the live endpoint a new key, which it honours at once (the old one is refused); its name
        and address stay. Called under the workspace lock."""
        raise self._unsupported("rotate_key")

    # --- processes ftctl started on this machine ----------------------------------------------------

    # Whether `live` and `stop_live` see everything this backend starts (its own processes); False
    # where jobs and endpoints live in a service.
    tracks_processes: ClassVar[bool] = False

    def warm_up(self, stages: Sequence[str]) -> None:  # noqa: B027  (a hook: most backends need none)
        """`ftctl run` is about to run `stages` (in order, the first now): start in the background what
        they will need later. Nothing by default."""

    def ended_outcome(self, stage: str, outputs: dict[str, Any]) -> tuple[str, str] | None:
        """For a `running` record of `stage` that no ftctl follows and whose work no longer runs (a job
        started with `submit --no-wait`): (outcome, what it says) when the work recorded its own end,
        e.g. ("completed", "...") or ("failed", "the trainer exited with code 1"); else None."""
        return None

    def outputs_gone(self, stage: str, outputs: dict[str, Any]) -> str | None:
        """Why what a succeeded `stage` made is no longer there, beyond its files (`output_files`):
        e.g. a registered version its registry no longer holds, or a registry that cannot be read.
        Answered in bounded time (it runs on `status`); None when it is there or cannot be told."""
        return None

    def explain_error(self, exc: BaseException) -> FtctlError | None:
        """An unexpected exception from a library this backend drives (a store, an SDK), as one line of
        ftctl's own with the right exit code, when the backend recognises it; else None."""
        return None

    def live(self, state: State | None) -> list[dict[str, Any]]:
        """The processes ftctl started that still run (training jobs, endpoints), from records kept
        outside the state file; each with "recorded": whether `state` (None: unreadable) knows it.
        A backend whose jobs and endpoints live in a service has none."""
        return []

    def stop_live(self, kinds: tuple[str, ...], unrecorded_in: State | None = None) -> list[str]:
        """Stop live processes of `kinds` ("job", "endpoint"); with `unrecorded_in`, only those that
        state does not record. Returns what was stopped, described. Called under the workspace lock."""
        return []
