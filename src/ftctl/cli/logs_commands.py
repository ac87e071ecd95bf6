"""`ftctl logs`: the fine-tuning job's log, on either backend (the backend's LOGS hook reads it).

Locally the job is one process and its log the job folder's log.txt; on Azure ML the pipeline job has
steps, each with its own user log. The command changes no stage state, so it takes no workspace lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import typer

from ftctl.cli.common import command
from ftctl.ui import printable

if TYPE_CHECKING:
    from ftctl.context import Context

PANEL = "Results"
# ruff: noqa: UP045 - typer reads Optional[...] annotations at run time (Python 3.10)


@command(PANEL)
def logs(
    ctx: Context,
    step: Optional[str] = typer.Option(
        None,
        "--step",
        metavar="NAME",
        help="The step whose log to show; default: the fine-tuning step. A wrong name lists the steps.",
    ),
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep showing new lines until the step ends (Ctrl-C stops)."
    ),
) -> None:
    """Show the log of the fine-tuning job `ftctl submit` started.

    Locally that is everything the job printed (its log.txt; the job is one step, `finetune`). On Azure
    ML it is the user log (user_logs/std_log.txt) of one step of the pipeline job, by default
    chat_completion_finetune. The lines go to stdout, a summary (job, step, their states) to stderr;
    with --json one object holds both."""
    ctx.backend.require("logs")
    collected: list[str] = []  # with --json: the lines, for the one object at the end
    written = 0

    def write(line: str) -> None:
        nonlocal written
        written += 1
        if ctx.ui.json_mode:
            collected.append(line)
        else:
            print(printable(line), file=ctx.ui.out, flush=True)

    try:
        shown = ctx.backend.logs(ctx.state_store.load(), step, follow, write)
    except KeyboardInterrupt:
        ctx.ui.info(f"stopped after {written} line{'' if written == 1 else 's'}; the job keeps running")
        raise
    ctx.ui.emit({"backend": ctx.backend.name, **shown, "lines": collected})
    if not written:
        ctx.ui.info(f"the log of step {shown['step']} is empty so far ({shown['source']})")
    ctx.ui.info(
        f"job {shown['job']}: {shown['job_status']}; step {shown['step']}: {shown['step_status']}; "
        f"{written} line{'' if written == 1 else 's'} from {shown['source']}"
    )
