"""What every ftctl command shares: the Typer app, the global options, the Context built from them,
and the one place where errors become messages and exit codes (`handle_errors`).

Commands are thin: they turn options into config overrides, take the workspace lock, ask the pipeline
runner to run a stage, and render the result.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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
    add_completion=True,  # ftctl --install-completion (bash, zsh, fish, PowerShell)
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
    workspace_config: Path | None = typer.Option(
        None,
        "--workspace-config",
        metavar="PATH",
        help="Azure ML: the workspace's config.json (default: searched for from the working directory up).",
    ),
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
    debug: bool = typer.Option(False, "--debug", envvar="FTCTL_DEBUG", help="Show tracebacks."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
) -> None:
    overrides = list(overrides)
    if workspace_config is not None:  # the same as --set azureml.workspace_config=PATH
        path = json.dumps(str(workspace_config.expanduser().absolute()))
        overrides.insert(0, f"azureml.workspace_config={path}")
    ctx.obj = Options(workspace, config, backend, overrides, json_output, debug)


def options(tctx: typer.Context) -> Options:
    obj = tctx.find_root().obj
    assert isinstance(obj, Options)
    return obj


def build_context(tctx: typer.Context, extra: Sequence[str] = ()) -> Any:  # -> ftctl.context.Context
    from ftctl.config import load_config
    from ftctl.context import Context
    from ftctl.ui import UI

    opts = options(tctx)
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
def handle_errors(tctx: typer.Context) -> Iterator[None]:
    """The one place where errors become messages and exit codes."""
    opts = options(tctx)
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


FORCE = typer.Option(False, "--force", "-f", help="Run even if the stage is up to date.")
JSON = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
