"""What every ftctl command shares: the Typer app, the global options, the Context built from them,
and the one place where errors become messages and exit codes (`handle_errors`).

Commands are thin: they turn options into config overrides, take the workspace lock, ask the pipeline
runner to run a stage, and render the result.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
import typer.core

from ftctl import __version__, exiting
from ftctl.backends import DEFAULT, NAMES
from ftctl.cli import help as cli_help
from ftctl.errors import FtctlError

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.pipeline import Runner
    from ftctl.stages.contract import RunOptions

app = typer.Typer(
    name="ftctl",
    cls=cli_help.Group,  # help drawn without importing Rich (ftctl.cli.help)
    help=(
        "Fine-tune a chat model, stage by stage: auth, pick-model, check-compute, prepare-data, submit, "
        "register, deploy, score, teardown. `ftctl run` runs them all, skipping what is up to date."
    ),
    no_args_is_help=True,
    epilog=(
        "Examples:\n"
        "  # all nine stages on this machine, offline (the built-in tiny model and sample data)\n"
        "  ftctl run\n"
        "  # where things stand, and why a stage would run again\n"
        "  ftctl status\n"
        "  # one stage, with a changed setting\n"
        "  ftctl submit --set finetune.learning_rate=1e-4\n"
        "  # the notebook on Azure ML\n"
        "  ftctl --backend azureml --config configs/azureml-phi4-ultrachat.yaml run"
    ),
    add_completion=True,  # ftctl --install-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class Options:
    """The global options; the Context is built from them on first use (so --help stays instant)."""

    workspace: str  # as given: checked when the Context is built (an empty one is refused)
    config: Path | None
    backend: str | None
    overrides: list[str] = field(default_factory=list)
    json: bool = False
    debug: bool = False
    # What a caller embedding ftctl injects into the backend's handles (`app(obj=BackendOptions(...))`;
    # the tests pass their fake Azure ML transport and credential this way).
    backend_options: Mapping[str, Any] = field(default_factory=dict)


class BackendOptions(dict[str, Any]):
    """Handed to the app as its `obj` by a caller that injects into the backend (see Options)."""


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ftctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    workspace: str = typer.Option(
        ".ftctl",
        "--workspace",
        "-w",
        metavar="PATH",
        envvar="FTCTL_WORKSPACE",
        help="Workspace folder (state, data, jobs).",
    ),
    config: Path | None = typer.Option(
        None, "--config", "-c", envvar="FTCTL_CONFIG", help="Config YAML; default: the local quickstart."
    ),
    backend: str | None = typer.Option(
        None,
        "--backend",
        "-b",
        envvar="FTCTL_BACKEND",
        help=" or ".join(f"{name} (default)" if name == DEFAULT else name for name in NAMES) + ".",
    ),
    overrides: list[str] = typer.Option(
        [],
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a config value: --set finetune.learning_rate=1e-4 (repeatable).",
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
    injected = ctx.obj if isinstance(ctx.obj, BackendOptions) else {}
    ctx.obj = Options(workspace, config, backend, overrides, json_output, debug, injected)


def options(tctx: typer.Context) -> Options:
    obj = tctx.find_root().obj
    assert isinstance(obj, Options)
    return obj


NAME_MAX_BYTES = 255  # the longest name of a file or folder on Linux's and macOS's file systems


def workspace_path(given: str) -> Path:
    """The workspace folder `--workspace` names, absolute; UsageError for an empty name (it would make
    the current folder the workspace), a path that exists and is not a folder, a folder name too long
    for a file system, or a path under a file."""
    from ftctl.errors import UsageError

    if not given.strip():
        raise UsageError(
            "--workspace is empty (FTCTL_WORKSPACE or -w ''); name a folder",
            hint="leave it out for .ftctl in the current folder",
        )
    path = Path(given).expanduser().absolute()
    long = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX_BYTES), None)
    if long is not None:  # before anything asks the file system about it: that is an OSError
        raise UsageError(
            f"--workspace {given[:40]}...: the folder name {long[:20]}... is longer than {NAME_MAX_BYTES} "
            "bytes, the most a file system takes"
        )
    if path.exists() and not path.is_dir():
        raise UsageError(f"--workspace {given}: {path} exists and is not a folder")
    above = next((parent for parent in path.parents if parent.exists()), None)
    if above is not None and not above.is_dir():
        raise UsageError(f"--workspace {given}: {above} is not a folder, so nothing can be made under it")
    return path


def build_context(tctx: typer.Context, extra: Sequence[str] = ()) -> Context:
    from ftctl import threads
    from ftctl.config import WORKSPACE_CONFIG, load_config
    from ftctl.context import Context
    from ftctl.errors import UsageError
    from ftctl.ui import UI

    opts = options(tctx)
    if opts.backend is not None and opts.backend not in NAMES:
        raise UsageError(f"--backend must be {' or '.join(NAMES)} (got {opts.backend!r})")
    # Read by the trainer, the evaluation and the endpoint, long after the command started: a bad value
    # is refused now (exit 2), before anything runs.
    threads.check()
    workspace = workspace_path(opts.workspace)
    loaded = load_config(
        opts.config,
        [*opts.overrides, *extra],
        backend=opts.backend,
        workspace_file=workspace / WORKSPACE_CONFIG,
    )
    return Context(
        workspace=workspace,
        config=loaded,
        ui=UI(json_mode=opts.json),
        debug=opts.debug,
        command=shlex.join(["ftctl", *sys.argv[1:]]),
        backend_options=opts.backend_options,
    )


@contextlib.contextmanager
def handle_errors(opts: Options) -> Iterator[None]:
    """The one place where errors become messages and exit codes."""
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
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (ftctl.exiting.Terminated)
        said, code = exiting.interrupted_as(isinstance(exc, exiting.Terminated))
        typer.echo(said, err=True)
        raise typer.Exit(code) from None
    except BrokenPipeError:
        # `ftctl status | head -1`: the reader left. Point stdout at /dev/null so the interpreter's final
        # flush does not complain either, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if opts.debug:
            traceback.print_exc()
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
        if not opts.debug:
            typer.echo("hint: re-run with --debug for the traceback", err=True)
        raise typer.Exit(1) from None


# Options every command accepts after its name too: `ftctl submit --set finetune.learning_rate=1e-4`
# means the same as `ftctl --set finetune.learning_rate=1e-4 submit`.
_COMMON = [
    inspect.Parameter("_tctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    inspect.Parameter(
        "_json",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=bool,
        default=typer.Option(False, "--json", help="Print machine-readable JSON on stdout."),
    ),
    inspect.Parameter(
        "_config",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Optional[Path],  # noqa: UP045 - typer reads this annotation at run time
        default=typer.Option(
            None, "--config", "-c", metavar="PATH", help="Config YAML (as the global --config)."
        ),
    ),
    inspect.Parameter(
        "_set",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=list[str],
        default=typer.Option(
            [], "--set", "-s", metavar="KEY=VALUE", help="Override a config value (as the global --set)."
        ),
    ),
]


def command(
    panel: str, name: str | None = None, settings: Mapping[str, str] | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a command whose body receives the built Context first, then its own options.

    The decorator adds --json, --config and --set to the command, maps errors to exit codes, and turns
    the options named in `settings` (option name -> config key) into config overrides when given.
    """
    settings = dict(settings or {})

    def decorate(body: Callable[..., None]) -> Callable[..., None]:
        first, *own = inspect.signature(body).parameters.values()  # the Context, then its options

        @functools.wraps(body)
        def wrapper(
            *, _tctx: typer.Context, _json: bool, _config: Path | None, _set: list[str], **kwargs: Any
        ) -> None:
            opts = options(_tctx)
            opts.json |= _json
            if _config is not None:
                opts.config = _config
            with handle_errors(opts):
                given = {key: kwargs.pop(option) for option, key in settings.items()}
                given = {key: value for key, value in given.items() if value is not None}
                extra = [f"{key}={json.dumps(value)}" for key, value in given.items()]
                ctx = build_context(_tctx, [*_set, *extra])
                _adopt_if_relocated(ctx)
                if given and not kwargs.get("dry_run"):
                    keep_settings(ctx, list(given))
                _warn_if_expired(ctx)
                try:
                    body(ctx, **kwargs)
                except FtctlError:
                    raise
                except Exception as exc:  # a library's error the backend can tell in one line
                    known = ctx.backend.explain_error(exc)
                    if known is None:
                        raise
                    raise known from exc

        # typer reads the signature and the annotations (resolved in the body's module).
        wrapper.__signature__ = inspect.Signature([*own, *_COMMON])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {
            **{k: v for k, v in body.__annotations__.items() if k not in (first.name, "return")},
            **{param.name: param.annotation for param in _COMMON},
        }
        app.command(name, cls=cli_help.Command, rich_help_panel=panel, help=reflow(body.__doc__))(wrapper)
        return body

    return decorate


def keep_settings(ctx: Context, keys: list[str]) -> None:
    """Stage options are settings: keep their (validated) values in the workspace's config.yaml, so
    that every later command agrees, and say so when one changes."""
    from ftctl import settings
    from ftctl.config import _read_file, flatten

    flat = ctx.config.flat()
    changed = settings.set_values(ctx.workspace, {key: flat[key] for key in keys}, "the command line")
    where = settings.layer_path(ctx.workspace)
    above = flatten(_read_file(ctx.config.source)[0]) if ctx.config.source else {}
    for key, (old, new) in changed.items():
        was = "default" if old is None else json.dumps(old)
        undo = f"`ftctl config unset {key}` undoes it"
        ctx.ui.info(f"{key}: {was} -> {json.dumps(new)} (kept in {where}; {undo})")
        if key in above:
            ctx.ui.warn(
                f"{key} is set in {ctx.config.source} too, which ranks above the workspace's settings: "
                "commands given that config use its value"
            )


def reflow(doc: str | None) -> str | None:
    """A docstring as help text: each paragraph's lines joined, so the terminal wraps it at its width
    (typer's rich help keeps a docstring's line breaks); list items keep their own lines."""
    if not doc:
        return doc
    paragraphs = []
    for block in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in block.splitlines():
            if lines and not line.lstrip().startswith(("- ", "* ")):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _adopt_if_relocated(ctx: Context) -> None:
    """A workspace found copied or moved since its last command is adopted first, once, under its lock
    (ftctl.relocation); one that holds an unreadable state, or whose lock another ftctl holds, is left
    to the command itself and to the next one."""
    from ftctl import relocation
    from ftctl.errors import LockTimeout, StateError
    from ftctl.state import locked

    store = ctx.state_store
    if not store.exists():
        return
    try:
        found = relocation.detect(ctx.workspace, store.load())
        if found is None:
            return
        with locked(ctx.workspace, ctx.command, min(ctx.cfg.lock_timeout_s, 2.0)):
            state = store.load()
            found = relocation.detect(ctx.workspace, state)
            if found is not None:
                ctx.ui.info(f"note: {found.describe()}")
                relocation.adopt(ctx, state, found)
    except (StateError, LockTimeout):
        return


def _warn_if_expired(ctx: Context) -> None:
    """The cost guard: every command says so when the workspace's endpoint is past its expiry."""
    from ftctl import ttl
    from ftctl.errors import StateError

    try:
        record = ttl.expired(ctx.state_store.load())
    except (StateError, ValueError):
        return  # the command itself reports an unreadable state
    if record:
        ctx.ui.warn(
            f"endpoint {record.get('endpoint_name')} is past its expiry ({ttl.uptime(record)}); "
            "`ftctl teardown` (or `ftctl teardown --expired`) tears it down"
        )


@contextlib.contextmanager
def runner_session(
    ctx: Context, run_options: RunOptions | None = None, check_backend: bool = True
) -> Iterator[Runner]:
    from ftctl.pipeline import Runner
    from ftctl.state import locked

    with locked(ctx.workspace, ctx.command, ctx.cfg.lock_timeout_s):
        yield Runner(ctx, run_options, check_backend=check_backend)


def _flags_show_no_type() -> None:
    """typer >=0.2x prints a type column for every option, flags included (`--json <bool>`), which
    reads as if the flag took a value. Show nothing there for flags, as click's own help does."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else original(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    _flags_show_no_type()

FORCE = typer.Option(False, "--force", "-f", help="Run even if the stage is up to date.")
RESTART = typer.Option(
    False,
    "--restart",
    help="Start the training job over instead of resuming a failed one from its last checkpoint.",
)
