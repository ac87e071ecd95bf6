"""Commands about a run's quality before and after it: `ftctl plan` (what submit will do, before it
costs anything) and `ftctl evaluate` (held-out loss, end of turn, side-by-side generations). Neither
changes the stage state, so neither takes the workspace lock."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
        help="Time a few optimizer steps on this machine (cached per model and settings).",
    ),
) -> None:
    """Show what `ftctl submit` would do, before it costs anything: tokens, run size, memory, time.

    Token statistics of the train and test splits with the model's own tokenizer and chat template
    (length percentiles, the share of assistant tokens, what max_seq_length cuts), optimizer steps and
    effective batch, a memory estimate against the device, and the training time from a short
    calibration. Exits 2 when submit would refuse the run."""
    from ftctl import plan as p
    from ftctl.errors import UsageError
    from ftctl.stages.contract import PLAN

    hooks = ctx.backend_impl.require_quality(PLAN)
    found = hooks.plan(ctx, ctx.state_store.load(), calibrate)
    ctx.ui.result(p.render(found))
    ctx.ui.emit(found.to_json())
    if found.errors:
        first = found.errors[0]
        raise UsageError(f"submit would refuse this run: {first.message}", hint=first.hint)
