"""The stage contract: what every backend's implementation of a stage provides, and what it is given.

A backend (ftctl.backends.<name>) implements each of the nine stages as a module that satisfies
`StageImpl`; its `Backend` class (ftctl.backends.base) lists them, declares what else it can do and
provides the commands outside the pipeline. mypy checks every implementation against the Protocol where
the backend builds its table.

This module is backend-neutral: it imports no backend and not the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ftctl.records import StateView

if TYPE_CHECKING:
    from ftctl.context import Context

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
    restart: bool = False  # `submit/run --restart`: a failed job starts over instead of resuming


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
    # What the previous attempt recorded, when this one starts anew (retired already): deploy keeps
    # the endpoint's name, address and key across re-deploys, as an Azure ML endpoint does.
    previous: Outputs = field(default_factory=dict)

    @property
    def upstream(self) -> StateView:
        """What the other stages recorded, typed and read-only (`call.upstream.pick_model.name`)."""
        return StateView(self.state)


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


LIVE_KINDS = ("job", "endpoint")  # what Backend.live reports and Backend.stop_live stops

LogWriter = Callable[[str], None]  # receives the log's lines, one at a time, without their newline


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
