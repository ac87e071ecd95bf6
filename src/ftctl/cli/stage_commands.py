"""The nine stage commands: each runs its stage through the pipeline runner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer

from ftctl.cli.common import FORCE, JSON, app, build_context, handle_errors, options, runner_session

DRY_RUN = typer.Option(
    False,
    "--dry-run",
    help="Azure ML: print what would be created (SDK entities as YAML); send and record nothing.",
)


def _run_stage(
    tctx: typer.Context,
    name: str,
    force: bool,
    as_json: bool,
    extra: Sequence[str] = (),
    wait: bool = True,
    dry_run: bool = False,
    flags: dict[str, Any] | None = None,
) -> None:
    options(tctx).json |= as_json
    with handle_errors(tctx):
        ctx = build_context(tctx, list(extra))
        ctx.wait = wait
        ctx.dry_run = dry_run
        ctx.flags = dict(flags or {})
        if dry_run and ctx.backend != "azureml":
            from ftctl.errors import UsageError

            raise UsageError("--dry-run is for --backend azureml (the local backend creates nothing remote)")
        ctx.ui.info(f"> {name}" + (" (dry run)" if dry_run else ""))
        with runner_session(ctx) as runner:
            result = runner.run_one(name, force=force)
        ctx.ui.emit(result)


@app.command(rich_help_panel="Stages")
def auth(tctx: typer.Context, force: bool = FORCE, as_json: bool = JSON) -> None:
    """Connect to the backend (local: create the workspace and its MLflow stores)."""
    _run_stage(tctx, "auth", force, as_json)


@app.command("pick-model", rich_help_panel="Stages")
def pick_model(
    tctx: typer.Context,
    model: str | None = typer.Option(None, "--model", "-m", help="Hub id, local folder or registry name."),
    list_models: bool = typer.Option(
        False, "--list", help="Azure ML: list the registry's chat-completion models (records nothing)."
    ),
    list_all: bool = typer.Option(False, "--all", help="With --list: every model, not only chat-completion."),
    force: bool = FORCE,
    as_json: bool = JSON,
) -> None:
    """Resolve the base model and record its metadata."""
    if list_models or list_all:
        _list_models(tctx, list_all, as_json)
        return
    _run_stage(tctx, "pick-model", force, as_json, [f"model.name={model}"] if model else [])


def _list_models(tctx: typer.Context, show_all: bool, as_json: bool) -> None:
    options(tctx).json |= as_json
    with handle_errors(tctx):
        from ftctl.errors import UsageError

        ctx = build_context(tctx)
        if ctx.backend != "azureml":
            raise UsageError(
                "--list lists an Azure ML registry's models", hint="use --backend azureml (and its config)"
            )
        from ftctl.backends.azureml.stages.pick_model import list_models
        from ftctl.ui import table

        rows = list_models(ctx, show_all)
        registry = ctx.cfg.azureml.registry_name
        kind = "models" if show_all else "chat-completion models"
        ctx.ui.info(f"{len(rows)} {kind} in registry {registry!r}")
        if rows:
            ctx.ui.result(
                table(
                    [
                        [r["name"], str(r["latest_version"] or ""), r["task"] or "", r["description"]]
                        for r in rows
                    ],
                    ["name", "latest", "task", "description"],
                )
            )
        ctx.ui.emit({"registry": registry, "models": rows})


@app.command("check-compute", rich_help_panel="Stages")
def check_compute(
    tctx: typer.Context, force: bool = FORCE, dry_run: bool = DRY_RUN, as_json: bool = JSON
) -> None:
    """Detect devices (or the cluster), choose device and precision, apply allow/deny lists."""
    _run_stage(tctx, "check-compute", force, as_json, dry_run=dry_run)


@app.command("prepare-data", rich_help_panel="Stages")
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


@app.command(rich_help_panel="Stages")
def submit(
    tctx: typer.Context,
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the job id is recorded."),
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
    as_json: bool = JSON,
) -> None:
    """Fine-tune the model as a job; streams progress (re-running re-attaches to a running job)."""
    _run_stage(tctx, "submit", force, as_json, wait=not no_wait, dry_run=dry_run)


@app.command(rich_help_panel="Stages")
def register(tctx: typer.Context, force: bool = FORCE, dry_run: bool = DRY_RUN, as_json: bool = JSON) -> None:
    """Register the fine-tuned model as a new version with lineage tags."""
    _run_stage(tctx, "register", force, as_json, dry_run=dry_run)


@app.command(rich_help_panel="Stages")
def deploy(tctx: typer.Context, force: bool = FORCE, dry_run: bool = DRY_RUN, as_json: bool = JSON) -> None:
    """Serve the registered model behind an endpoint (local: 127.0.0.1, key auth)."""
    _run_stage(tctx, "deploy", force, as_json, dry_run=dry_run)


@app.command(rich_help_panel="Stages")
def score(
    tctx: typer.Context,
    file: str | None = typer.Option(
        None,
        "--file",
        metavar="REQUEST.json",
        help="Send your own request instead (a scoring request or a conversation; - reads stdin). "
        "The stage state is left alone.",
    ),
    as_json: bool = JSON,
) -> None:
    """Score a seeded random test_gen conversation on the endpoint (or your own request with --file)."""
    if file is not None:
        from ftctl.cli.insight_commands import score_file

        score_file(tctx, file, as_json)
        return
    _run_stage(tctx, "score", False, as_json)


@app.command(rich_help_panel="Stages")
def teardown(
    tctx: typer.Context,
    compute: bool = typer.Option(
        False, "--compute", help="Azure ML: also delete the compute cluster, if check-compute created it."
    ),
    as_json: bool = JSON,
) -> None:
    """Delete the endpoint (local: stop the server and check its port is closed)."""
    if compute:
        with handle_errors(tctx):
            if build_context(tctx).backend != "azureml":
                from ftctl.errors import UsageError

                raise UsageError("--compute is for --backend azureml (the local backend has no cluster)")
    _run_stage(tctx, "teardown", False, as_json, flags={"compute": compute})
