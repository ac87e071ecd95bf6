"""Commands about a run's quality before and after it: `ftctl plan` (what submit will do, before it
costs anything) and `ftctl evaluate` (held-out loss, end of turn, side-by-side generations). Neither
changes the stage state, so neither takes the workspace lock."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ftctl.cli.common import command

if TYPE_CHECKING:
    from ftctl.context import Context

PANEL = "Quality"
# ruff: noqa: UP045 - typer reads Optional[...] annotations at run time (Python 3.10)


@command(PANEL)
def plan(
    ctx: Context,
    calibrate: bool = typer.Option(
        True,
        "--calibrate/--no-calibrate",
        help="Time a few optimizer steps on this machine (cached per model and settings; local backend).",
    ),
) -> None:
    """Show what `ftctl submit` would do, before it costs anything: tokens, run size, memory, time.

    Token statistics of the train and test splits with the model's own tokenizer and chat template
    (length percentiles, the share of assistant tokens, what max_seq_length cuts), optimizer steps and
    effective batch, a memory estimate against the device, and the training time from a short
    calibration. Exits 2 when submit would refuse the run.

    On --backend azureml it needs no login and sends nothing: tokens with a tokenizer found on this
    machine (plan.tokenizer) or a labelled estimate, memory against one GPU of the cluster's instance
    type, steps and tokens instead of a time."""
    from ftctl import plan as p
    from ftctl.errors import UsageError

    ctx.backend.require("plan")
    found = ctx.backend.plan(ctx.state_store.load(), calibrate)
    ctx.ui.result(p.render(found))
    ctx.ui.emit(found.to_json())
    if found.errors:
        first = found.errors[0]
        raise UsageError(f"submit would refuse this run: {first.message}", hint=first.hint)


@command(PANEL)
def evaluate(
    ctx: Context,
    samples: int = typer.Option(3, "--samples", min=0, max=20, help="Side-by-side generations to show."),
    report: Optional[Path] = typer.Option(
        None, "--report", metavar="DIR", help="Also write DIR/report.md with its figures (PNG)."
    ),
) -> None:
    """Evaluate the fine-tuned model on the held-out split, beside the base model and the previous version.

    Held-out loss and perplexity on assistant tokens (as the trainer's eval_loss), whether the model ends
    its turn, what `ftctl register`'s gate would decide, and greedy replies side by side."""
    from ftctl import evaluation as ev
    from ftctl.errors import FtctlError

    backend = ctx.backend
    backend.require("evaluate")
    state = ctx.state_store.load()
    found = backend.evaluate(state, samples)
    ctx.ui.result(ev.render(found))
    written = None
    if report is not None:
        plan = metrics = None
        if backend.has("plan"):
            with contextlib.suppress(FtctlError):
                plan = backend.plan(state, calibrate=False)
        if backend.has("metrics"):
            with contextlib.suppress(FtctlError):
                metrics = backend.metrics(state, None)
        written = ev.write_report(report.expanduser(), found, plan, metrics)
        ctx.ui.info(f"wrote {written}")
    ctx.ui.emit({**found.to_json(), "report": str(written) if written else None})
