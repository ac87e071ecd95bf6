"""The nine stage commands: each runs its stage through the pipeline runner."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import typer

from ftctl.cli.common import FORCE, RESTART, command, runner_session

if TYPE_CHECKING:
    from ftctl.context import Context

PANEL = "Stages"
DRY_RUN = typer.Option(
    False,
    "--dry-run",
    help="Azure ML: print what would be created or called (SDK entities as YAML); send and record "
    "nothing. Needs no login and no earlier stage.",
)
# typer reads the annotations below at run time: Optional[...] keeps them valid on Python 3.10.
# ruff: noqa: UP045


def run_stage(ctx: Context, name: str, force: bool = False, **options: bool) -> None:
    """Run one stage (unless up to date) and render the result."""
    from ftctl.pipeline import Runner
    from ftctl.stages.contract import RunOptions

    run_options = RunOptions(force=force, **options)
    ctx.ui.info(f"> {name}" + (" (dry run)" if run_options.dry_run else ""))
    if run_options.dry_run:  # records nothing: no lock, no state written
        ctx.backend.require("dry_run")
        ctx.ui.emit(Runner(ctx, run_options).dry_run(name))
        return
    with runner_session(ctx, run_options) as runner:
        result = runner.run_one(name)
    ctx.ui.emit(result)


@command(PANEL)
def auth(ctx: Context, force: bool = FORCE, dry_run: bool = DRY_RUN) -> None:
    """Connect to the backend (local: create the workspace and its MLflow stores)."""
    run_stage(ctx, "auth", force, dry_run=dry_run)


@command(PANEL, "pick-model", settings={"model": "model.name"})
def pick_model(
    ctx: Context,
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="A built-in name (ftctl/tiny-phi3-chat, smollm2-135m-instruct), a hub id, a local folder or a "
        "registry name.",
    ),
    list_models: bool = typer.Option(
        False, "--list", help="Azure ML: list the registry's chat-completion models (records nothing)."
    ),
    list_all: bool = typer.Option(False, "--all", help="With --list: every model, not only chat-completion."),
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
) -> None:
    """Resolve the base model and record its metadata."""
    if list_models or list_all:
        _list_models(ctx, list_all)
    else:
        run_stage(ctx, "pick-model", force, dry_run=dry_run)


def _list_models(ctx: Context, show_all: bool) -> None:
    from ftctl.ui import table

    ctx.backend.require("list_models")
    rows = ctx.backend.list_models(show_all)
    registry = ctx.cfg.azureml.registry_name
    kind = "models" if show_all else "chat-completion models"
    ctx.ui.info(f"{len(rows)} {kind} in registry {registry!r}")
    if rows:
        cells = [[r["name"], str(r["latest_version"] or ""), r["task"] or "", r["description"]] for r in rows]
        ctx.ui.result(table(cells, ["name", "latest", "task", "description"]))
    ctx.ui.emit({"registry": registry, "models": rows})


@command(PANEL, "check-compute")
def check_compute(ctx: Context, force: bool = FORCE, dry_run: bool = DRY_RUN) -> None:
    """Detect devices (or the cluster), choose device and precision, apply allow/deny lists."""
    run_stage(ctx, "check-compute", force, dry_run=dry_run)


@command(
    PANEL,
    "prepare-data",
    settings={
        "dataset": "data.dataset",
        "subset": "data.subset",
        "format": "data.format",
        "download_dir": "data.download_dir",
        "split_pc": "data.split_pc",
        "test_pc": "data.test_pc",
        "dedupe": "data.dedupe",
    },
)
def prepare_data(
    ctx: Context,
    dataset: Optional[str] = typer.Option(
        None,
        "--dataset",
        help="A data file (.jsonl, .json, .csv, .parquet), a folder of <split>.jsonl, a hub-layout folder "
        "or a hub id.",
    ),
    subset: Optional[str] = typer.Option(None, "--subset", help="Dataset config/subset name."),
    format: Optional[str] = typer.Option(
        None, "--format", help="openai, sharegpt, alpaca or prompt-completion (default: auto, detected)."
    ),
    download_dir: Optional[str] = typer.Option(None, "--download-dir", help="Where to write <split>.jsonl."),
    split_pc: Optional[float] = typer.Option(
        None, "--split-pc", help="Percent of each split to keep (0-100]."
    ),
    test_pc: Optional[float] = typer.Option(
        None, "--test-pc", help="One file: percent of its records held out as the test split [0-100)."
    ),
    dedupe: Optional[bool] = typer.Option(
        None, "--dedupe/--no-dedupe", help="Drop exact duplicates and test records also in train."
    ),
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
) -> None:
    """Read, validate and write the dataset splits as JSON lines (any chat format, in the ultrachat shape)."""
    run_stage(ctx, "prepare-data", force, dry_run=dry_run)


@command(PANEL)
def submit(
    ctx: Context,
    no_wait: bool = typer.Option(False, "--no-wait", help="Return once the job id is recorded."),
    no_plan: bool = typer.Option(
        False, "--no-plan", help="Skip the pre-flight check of tokens and memory (`ftctl plan`)."
    ),
    restart: bool = RESTART,
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
) -> None:
    """Fine-tune the model as a job; streams progress (re-running re-attaches to a running job, and
    resumes a killed one from its last checkpoint unless --restart).

    A new job is checked first (`ftctl plan`): a run that cannot work is refused (exit 2)."""
    run_stage(ctx, "submit", force, wait=not no_wait, dry_run=dry_run, plan=not no_plan, restart=restart)


@command(PANEL)
def register(
    ctx: Context,
    force: bool = typer.Option(
        False,
        "--force",
        "-f",
        help="Run even if up to date, and register even a model the gate refuses (recorded as forced).",
    ),
    dry_run: bool = DRY_RUN,
) -> None:
    """Register the fine-tuned model as a new version with lineage tags.

    The gate comes first (register.gate: improve): a model no better than the base model, or than the
    previous version, on held-out loss is refused (exit 1) unless --force."""
    run_stage(ctx, "register", force, dry_run=dry_run, skip_gate=force)


@command(PANEL, settings={"ttl": "deploy.ttl"})
def deploy(
    ctx: Context,
    ttl: Optional[str] = typer.Option(
        None,
        "--ttl",
        metavar="DURATION",
        help="Time to live, e.g. 30m, 4h, 2d (deploy.ttl): past it every command warns, "
        "`ftctl teardown --expired` tears the endpoint down, and the local server stops itself.",
    ),
    force: bool = FORCE,
    dry_run: bool = DRY_RUN,
) -> None:
    """Serve the registered model behind an endpoint (local: 127.0.0.1, key auth)."""
    run_stage(ctx, "deploy", force, dry_run=dry_run)


@command(PANEL)
def score(
    ctx: Context,
    file: Optional[str] = typer.Option(
        None,
        "--file",
        metavar="REQUEST.json",
        help="Send your own request instead (a scoring request or a conversation; - reads stdin). "
        "The stage state is left alone.",
    ),
    dry_run: bool = DRY_RUN,
) -> None:
    """Score a seeded random test_gen conversation on the endpoint (or your own request with --file)."""
    if file is not None:
        from ftctl.cli.insight_commands import score_file

        score_file(ctx, file)
    else:
        run_stage(ctx, "score", dry_run=dry_run)


@command(PANEL)
def teardown(
    ctx: Context,
    compute: bool = typer.Option(
        False, "--compute", help="Azure ML: also delete the compute cluster, if check-compute created it."
    ),
    expired: bool = typer.Option(
        False,
        "--expired",
        help="Only if the endpoint is past its expiry (deploy.ttl); safe to run from cron.",
    ),
    dry_run: bool = DRY_RUN,
) -> None:
    """Delete the endpoint (local: stop the server and check its port is closed)."""
    if expired:
        from ftctl import ttl

        if ttl.expired(ctx.state_store.load()) is None:
            ctx.ui.info("no endpoint past its expiry: nothing to tear down")
            ctx.ui.emit({"stage": "teardown", "status": "nothing expired", "outputs": {}})
            return
    if compute:
        ctx.backend.require("cluster")
    if not dry_run and _nothing_deployed(ctx):
        return
    run_stage(ctx, "teardown", compute=compute, dry_run=dry_run)


def _nothing_deployed(ctx: Context) -> bool:
    """True (and said so) when no endpoint was deployed, so `trap 'ftctl teardown' EXIT` exits 0.

    A local server left by a deploy that did not finish is stopped here, under the lock (with any key
    no running server claims). A deploy that did not finish but recorded an endpoint in a service
    (Azure ML) goes to the stage."""
    from ftctl import state as st
    from ftctl.cli.common import runner_session

    deploy = st.record(ctx.state_store.load(), "deploy")
    if deploy["status"] == st.SUCCEEDED:
        return False
    with runner_session(ctx, check_backend=False):
        stopped = ctx.backend.stop_live(("endpoint",))
    if deploy.get("outputs") and not stopped and not ctx.backend.tracks_processes:
        return False  # an endpoint in a service that this machine cannot see: the stage decides
    for what in stopped:
        ctx.ui.info(f"stopped {what} (left by a deploy that did not finish)")
    if not stopped:
        ctx.ui.info("no endpoint is deployed: nothing to tear down")
    ctx.ui.emit({"stage": "teardown", "status": "nothing deployed", "outputs": {"stopped": stopped}})
    return True
