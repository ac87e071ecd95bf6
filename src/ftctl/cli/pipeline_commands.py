"""Commands about the pipeline as a whole: run, status, reset."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import typer

from ftctl.cli.common import RESTART, command, runner_session

if TYPE_CHECKING:
    from ftctl.context import Context

PANEL = "Pipeline"
# ruff: noqa: UP045 - typer reads Optional[...] annotations at run time (Python 3.10)


@command(PANEL)
def run(
    ctx: Context,
    from_: Optional[str] = typer.Option(None, "--from", help="First stage to consider."),
    to: Optional[str] = typer.Option(None, "--to", help="Last stage to consider."),
    force: bool = typer.Option(False, "--force", "-f", help="Re-run the stages even if up to date."),
    restart: bool = RESTART,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Azure ML: print, stage by stage, what would be created or called; no login, no earlier "
        "stage needed; nothing sent, nothing recorded.",
    ),
) -> None:
    """Run the stages in order, skipping those that are up to date."""
    from ftctl.pipeline import Runner
    from ftctl.stages.contract import RunOptions

    if dry_run:  # records nothing: no lock, no state written
        ctx.backend.require("dry_run")
        ctx.ui.emit({"stages": Runner(ctx, RunOptions(dry_run=True)).dry_run_many(from_, to)})
        return
    with runner_session(ctx, RunOptions(force=force, restart=restart)) as runner:
        results = runner.run_many(from_, to)
    ctx.ui.info("done: every stage succeeded or was up to date")
    ctx.ui.emit({"stages": results})


def _when(stage: dict[str, Any]) -> str:
    stamp = stage.get("ended_at") or stage.get("started_at")
    if not stamp:
        return ""
    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@command(PANEL)
def status(
    ctx: Context,
    stage: Optional[str] = typer.Argument(None, help="One stage, in detail: outputs, error, why stale."),
    wide: bool = typer.Option(False, "--wide", help="Every column in full, whatever the terminal's width."),
) -> None:
    """Show each stage: status, when, key outputs, and whether it is stale (and why).

    On a terminal the table fits its width (80 columns at least); piped, it is printed in full, as
    with --wide. `ftctl status STAGE` shows one stage in full."""
    from ftctl.pipeline import get_stage, status_report
    from ftctl.ui import table

    report = status_report(ctx)
    stages = [{k: v for k, v in s.items() if k != "summary"} for s in report["stages"]]
    if stage is not None:
        name = get_stage(stage).name
        ctx.ui.emit(next(s for s in stages if s["name"] == name))
        ctx.ui.result(_detail(next(s for s in report["stages"] if s["name"] == name)))
        return
    ctx.ui.emit({**report, "stages": stages})
    run_id = f", run {report['run_id']}" if report["run_id"] else ""
    header = f"workspace {report['workspace']} ({report['backend']}{run_id})"
    columns = None if wide else _terminal_columns()
    if columns and len(header) > columns:  # the path on a line of its own
        header = f"workspace {report['workspace']}\n  ({report['backend']}{run_id})"
    ctx.ui.result(header)
    if columns is None:
        rows = [
            [s["name"], s["status"], _when(s), s["summary"], f"stale: {s['stale_reason']}" * s["stale"]]
            for s in report["stages"]
        ]
        ctx.ui.result(table(rows, ["STAGE", "STATUS", "WHEN", "OUTPUTS", "STALE"]))
    else:
        ctx.ui.result(_narrow_table(report["stages"], columns))
    for item in report["live"]:
        if not item["recorded"]:
            ctx.ui.warn(
                f"{item['description']} runs but the state does not record it: `ftctl reset --all` stops it"
            )


def _terminal_columns() -> int | None:
    """The width to fit `status` to when stdout is a terminal: its width (COLUMNS overrides it), at
    least 80; None when the output goes elsewhere (a pipe, a file), which gets the table in full."""
    import shutil
    import sys

    if sys.stdout.isatty():
        return max(shutil.get_terminal_size((80, 24)).columns, 80)
    return None


def _narrow_table(stages: list[dict[str, Any]], columns: int) -> str:
    """STAGE, STATUS, WHEN and one column of what matters most (why it is stale, else its outputs),
    fitted to `columns` at a word boundary."""
    from ftctl.ui import fit, table

    rows = [[s["name"], s["status"], _when(s)] for s in stages]
    used = sum(max(len(r[i]) for r in [["STAGE", "STATUS", "WHEN"], *rows]) + 2 for i in range(3))
    room = max(columns - used - 1, 20)
    for row, s in zip(rows, stages, strict=True):
        row.append(fit(f"stale: {s['stale_reason']}" if s["stale"] else s["summary"], room))
    cut = any(r[3].endswith("…") for r in rows)
    hint = "\n(… cut to fit: `ftctl status STAGE` or `ftctl status --wide` shows it all)" if cut else ""
    return table(rows, ["STAGE", "STATUS", "WHEN", "DETAILS"]) + hint


def _detail(s: dict[str, Any]) -> str:
    """One stage in full, for `ftctl status STAGE`."""
    lines = [f"{s['name']}: {s['status']}" + (f" (attempt {s['attempt']})" if s["attempt"] else "")]
    for label, key in (("started", "started_at"), ("ended", "ended_at")):
        if s.get(key):
            lines.append(f"  {label}: {s[key]} ({_when({'ended_at': s[key]})})")
    if s["stale"]:
        lines.append(f"  stale: {s['stale_reason']}")
    elif s.get("note"):
        lines.append(f"  note: {s['note']}")
    if s.get("error"):
        lines.append(f"  error: {s['error'].get('message')}")
    if s["summary"]:
        lines.append(f"  summary: {s['summary']}")
    if s["outputs"]:
        lines.append("  outputs:")
        lines += [f"    {key}: {value}" for key, value in s["outputs"].items() if not isinstance(value, dict)]
    return "\n".join(lines)


@command(PANEL)
def reset(
    ctx: Context,
    stage: Optional[str] = typer.Argument(None, help="Stage to forget (with everything downstream)."),
    all_: bool = typer.Option(False, "--all", help="Forget every stage (files in the workspace stay)."),
    restore_backup: bool = typer.Option(
        False, "--restore-backup", help="Replace the state file by its previous version (state.json.bak)."
    ),
) -> None:
    """Forget a stage and everything downstream, so they run again."""
    from ftctl import pipeline
    from ftctl.errors import UsageError
    from ftctl.state import locked

    if sum([stage is not None, all_, restore_backup]) != 1:
        raise UsageError("give exactly one of: a STAGE, --all, --restore-backup")
    store = ctx.state_store
    with locked(ctx.workspace, ctx.command, ctx.cfg.lock_timeout_s):
        if restore_backup:
            stopped = pipeline.restore_backup(ctx)
            ctx.ui.info(f"restored {store.path} from {store.backup.name}")
            for what in stopped:
                ctx.ui.info(f"stopped {what}: the restored state does not record it")
            ctx.ui.emit({"restored": str(store.path), "stopped": stopped})
            return
        names = pipeline.reset(ctx, None if all_ else stage)
    ctx.ui.info(f"reset: {', '.join(names)} (pending)")
    ctx.ui.emit({"reset": names})
