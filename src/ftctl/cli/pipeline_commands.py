"""Commands about the pipeline as a whole: run, status, reset."""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timezone
from typing import Any

import typer

from ftctl.cli.common import JSON, app, build_context, handle_errors, options, runner_session


@app.command(rich_help_panel="Pipeline")
def run(
    tctx: typer.Context,
    from_: str | None = typer.Option(None, "--from", help="First stage to consider."),
    to: str | None = typer.Option(None, "--to", help="Last stage to consider."),
    force: bool = typer.Option(False, "--force", "-f", help="Re-run the stages even if up to date."),
    as_json: bool = JSON,
) -> None:
    """Run the stages in order, skipping those that are up to date."""
    options(tctx).json |= as_json
    with handle_errors(tctx):
        ctx = build_context(tctx)
        with runner_session(ctx) as runner:
            results = runner.run_many(from_, to, force)
        ctx.ui.info("done: every stage succeeded or was up to date")
        ctx.ui.emit({"stages": results})


def _when(rec: dict[str, Any]) -> str:
    stamp = rec.get("ended_at") or rec.get("started_at")
    if not stamp:
        return ""
    seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@app.command(rich_help_panel="Pipeline")
def status(tctx: typer.Context, as_json: bool = JSON) -> None:
    """Show each stage: status, when, key outputs, and whether it is stale (and why)."""
    options(tctx).json |= as_json
    with handle_errors(tctx):
        from ftctl import state as st
        from ftctl.pipeline import STAGES, evaluate, summary
        from ftctl.ui import table

        ctx = build_context(tctx)
        state = ctx.state_store.load()
        ctx.state = state
        evaluation = evaluate(ctx, state)
        rows, items = [], []
        for stage in STAGES:
            rec = st.record(state, stage.name)
            ev = evaluation[stage.name]
            items.append(
                {
                    "name": stage.name,
                    "status": rec["status"],
                    "stale": ev.stale,
                    "stale_reason": ev.reason,
                    "attempt": rec.get("attempt", 0),
                    "started_at": rec.get("started_at"),
                    "ended_at": rec.get("ended_at"),
                    "outputs": rec.get("outputs") or {},
                    "error": rec.get("error"),
                }
            )
            rows.append(
                [
                    stage.name,
                    rec["status"],
                    _when(rec),
                    summary(stage, rec, ctx.backend),
                    f"stale: {ev.reason}" if ev.stale else "",
                ]
            )
        ctx.ui.emit(
            {
                "workspace": str(ctx.workspace),
                "backend": state.get("backend") or ctx.backend,
                "run_id": state.get("run_id"),
                "stages": items,
            }
        )
        ctx.ui.result(
            f"workspace {ctx.workspace} ({state.get('backend') or ctx.backend}, run {state.get('run_id')})"
        )
        ctx.ui.result(table(rows, ["STAGE", "STATUS", "WHEN", "OUTPUTS", "STALE"]))


@app.command(rich_help_panel="Pipeline")
def reset(
    tctx: typer.Context,
    stage: str | None = typer.Argument(None, help="Stage to forget (with everything downstream)."),
    all_: bool = typer.Option(False, "--all", help="Forget every stage (files in the workspace stay)."),
    restore_backup: bool = typer.Option(
        False, "--restore-backup", help="Replace the state file by its previous version (state.json.bak)."
    ),
    as_json: bool = JSON,
) -> None:
    """Forget a stage and everything downstream, so they run again."""
    options(tctx).json |= as_json
    with handle_errors(tctx):
        from ftctl.errors import UsageError

        ctx = build_context(tctx)
        if sum([stage is not None, all_, restore_backup]) != 1:
            raise UsageError("give exactly one of: a STAGE, --all, --restore-backup")
        with runner_session(ctx, check_backend=False) as runner:
            if restore_backup:
                ctx.state_store.restore_backup()
                ctx.ui.info(f"restored {ctx.state_store.path} from {ctx.state_store.backup.name}")
                ctx.ui.emit({"restored": str(ctx.state_store.path)})
                return
            if all_ and runner.state is None:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(ctx.state_store.path, ctx.state_store.path.with_suffix(".json.corrupt"))
                ctx.ui.info("moved the unreadable state file aside (state.json.corrupt); starting over")
                ctx.ui.emit({"reset": "all"})
                return
            names = runner.reset(None if all_ else stage)
        ctx.ui.info(f"reset: {', '.join(names)} (pending)")
        ctx.ui.emit({"reset": names})
