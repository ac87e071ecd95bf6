"""The `ftctl` command line: global options, one command per stage, run, status and reset.

Commands are thin: they turn options into config overrides, take the workspace lock, ask the pipeline
runner to run a stage, and render the result. Errors are mapped to exit codes in one place (`_errors`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import typer

from ftctl import __version__
from ftctl.errors import FtctlError

app = typer.Typer(
    name="ftctl",
    help=(
        "Fine-tune a chat model, stage by stage: auth, pick-model, check-compute, prepare-data, submit, "
        "register, deploy, score, teardown. `ftctl run` runs them all, skipping what is up to date."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class Options:
    """The global options; the Context is built from them on first use (so --help stays instant)."""

    workspace: Path
    config: Path | None
    backend: str | None
    overrides: list[str] = field(default_factory=list)
    json: bool = False
    debug: bool = False


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ftctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    workspace: Path = typer.Option(
        Path(".ftctl"),
        "--workspace",
        "-w",
        envvar="FTCTL_WORKSPACE",
        help="Workspace folder (state, data, jobs).",
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", envvar="FTCTL_CONFIG", help="Config YAML; default: the local quickstart."
    ),
    backend: str | None = typer.Option(
        None, "--backend", "-b", envvar="FTCTL_BACKEND", help="local (default) or azureml."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", "-s", help="Override a config value: --set finetune.learning_rate=1e-4 (repeatable)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
    debug: bool = typer.Option(False, "--debug", envvar="FTCTL_DEBUG", help="Show tracebacks."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    ctx.obj = Options(workspace, config, backend, list(overrides), json_output, debug)


def _options(tctx: typer.Context) -> Options:
    obj = tctx.find_root().obj
    assert isinstance(obj, Options)
    return obj


def build_context(tctx: typer.Context, extra: Sequence[str] = ()) -> Any:  # -> ftctl.context.Context
    from ftctl.config import load_config
    from ftctl.context import Context
    from ftctl.ui import UI

    opts = _options(tctx)
    if opts.backend is not None and opts.backend not in ("local", "azureml"):
        from ftctl.errors import UsageError

        raise UsageError(f"--backend must be local or azureml (got {opts.backend!r})")
    loaded = load_config(opts.config, [*opts.overrides, *extra], backend=opts.backend)
    return Context(
        workspace=opts.workspace.expanduser().absolute(),
        config=loaded,
        ui=UI(json_mode=opts.json),
        debug=opts.debug,
        command=shlex.join(["ftctl", *sys.argv[1:]]),
    )


@contextlib.contextmanager
def _errors(tctx: typer.Context) -> Iterator[None]:
    """The one place where errors become messages and exit codes."""
    opts = _options(tctx)
    try:
        yield
    except FtctlError as exc:
        if opts.debug:
            traceback.print_exc()
        typer.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            typer.echo(f"hint: {exc.hint}", err=True)
        if opts.json:
            typer.echo(
                json.dumps({"error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}})
            )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if opts.debug:
            traceback.print_exc()
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
        if not opts.debug:
            typer.echo("hint: re-run with --debug for the traceback", err=True)
        raise typer.Exit(1) from None


@contextlib.contextmanager
def runner_session(ctx: Any, check_backend: bool = True) -> Iterator[Any]:
    from ftctl.pipeline import Runner
    from ftctl.state import locked

    with locked(ctx.workspace, ctx.command, ctx.cfg.lock_timeout_s):
        yield Runner(ctx, check_backend=check_backend)


def _run_stage(
    tctx: typer.Context, name: str, force: bool, as_json: bool, extra: Sequence[str] = (), wait: bool = True
) -> None:
    _options(tctx).json |= as_json
    with _errors(tctx):
        ctx = build_context(tctx, list(extra))
        ctx.wait = wait
        ctx.ui.info(f"> {name}")
        with runner_session(ctx) as runner:
            result = runner.run_one(name, force=force)
        ctx.ui.emit(result)


FORCE = typer.Option(False, "--force", "-f", help="Run even if the stage is up to date.")
JSON = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")


@app.command()
def auth(tctx: typer.Context, force: bool = FORCE, as_json: bool = JSON) -> None:
    """Connect to the backend (local: create the workspace and its MLflow stores)."""
    _run_stage(tctx, "auth", force, as_json)


@app.command("pick-model")
def pick_model(
    tctx: typer.Context,
    model: str | None = typer.Option(None, "--model", "-m", help="Hub id, local folder or registry name."),
    force: bool = FORCE,
    as_json: bool = JSON,
) -> None:
    """Resolve the base model and record its metadata."""
    _run_stage(tctx, "pick-model", force, as_json, [f"model.name={model}"] if model else [])


@app.command("check-compute")
def check_compute(tctx: typer.Context, force: bool = FORCE, as_json: bool = JSON) -> None:
    """Detect devices (or the cluster), choose device and precision, apply allow/deny lists."""
    _run_stage(tctx, "check-compute", force, as_json)


@app.command("prepare-data")
def prepare_data(
    tctx: typer.Context,
    dataset: str | None = typer.Option(
        None, "--dataset", help="Hub id, hub-layout folder or folder of <split>.jsonl."
    ),
    subset: str | None = typer.Option(None, "--subset", help="Dataset config/subset name."),
    download_dir: str | None = typer.Option(None, "--download-dir", help="Where to write <split>.jsonl."),
    split_pc: float | None = typer.Option(None, "--split-pc", help="Percent of each split to keep (0-100]."),
    force: bool = FORCE,
    as_json: bool = JSON,
) -> None:
    """Download, validate and write the dataset splits as JSON lines."""
    extra = [
        f"data.{key}={value}"
        for key, value in (
            ("dataset", dataset),
            ("subset", subset),
            ("download_dir", download_dir),
            ("split_pc", split_pc),
        )
        if value is not None
    ]
    _run_stage(tctx, "prepare-data", force, as_json, extra)


@app.command()
def submit(
    tctx: typer.Context,
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the job id is recorded."),
    force: bool = FORCE,
    as_json: bool = JSON,
) -> None:
    """Fine-tune the model as a job; streams progress (re-running re-attaches to a running job)."""
    _run_stage(tctx, "submit", force, as_json, wait=not no_wait)


@app.command()
def register(tctx: typer.Context, force: bool = FORCE, as_json: bool = JSON) -> None:
    """Register the fine-tuned model as a new version with lineage tags."""
    _run_stage(tctx, "register", force, as_json)


@app.command()
def deploy(tctx: typer.Context, force: bool = FORCE, as_json: bool = JSON) -> None:
    """Serve the registered model behind an endpoint (local: 127.0.0.1, key auth)."""
    _run_stage(tctx, "deploy", force, as_json)


@app.command()
def score(tctx: typer.Context, as_json: bool = JSON) -> None:
    """Score a seeded random test_gen conversation on the endpoint."""
    _run_stage(tctx, "score", False, as_json)


@app.command()
def teardown(tctx: typer.Context, as_json: bool = JSON) -> None:
    """Delete the endpoint (local: stop the server and check its port is closed)."""
    _run_stage(tctx, "teardown", False, as_json)


@app.command()
def run(
    tctx: typer.Context,
    from_: str | None = typer.Option(None, "--from", help="First stage to consider."),
    to: str | None = typer.Option(None, "--to", help="Last stage to consider."),
    force: bool = typer.Option(False, "--force", "-f", help="Re-run the stages even if up to date."),
    as_json: bool = JSON,
) -> None:
    """Run the stages in order, skipping those that are up to date."""
    _options(tctx).json |= as_json
    with _errors(tctx):
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


@app.command()
def status(tctx: typer.Context, as_json: bool = JSON) -> None:
    """Show each stage: status, when, key outputs, and whether it is stale (and why)."""
    _options(tctx).json |= as_json
    with _errors(tctx):
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
                    summary(stage, rec),
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


@app.command()
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
    _options(tctx).json |= as_json
    with _errors(tctx):
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


def main() -> None:
    app(prog_name="ftctl")


if __name__ == "__main__":
    main()
