"""Commands about the settings: `ftctl config show|set|unset` (the workspace's own layer, see
ftctl.settings) and `ftctl init` (a commented starting config to edit and pass with --config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from ftctl.cli.common import command

if TYPE_CHECKING:
    from ftctl.context import Context

PANEL = "Settings"
ACTIONS = ("show", "set", "unset")
INIT_FILE = "ftctl.yaml"
# ruff: noqa: UP045 - typer reads Optional[...] annotations at run time (Python 3.10)


@command(PANEL, "config")
def config(
    ctx: Context,
    action: str = typer.Argument("show", metavar="show|set|unset", help="What to do (default: show)."),
    key: Optional[str] = typer.Argument(None, metavar="[KEY]", help="A setting: section.key."),
    value: Optional[str] = typer.Argument(None, metavar="[VALUE]", help="For set: the value (YAML)."),
) -> None:
    """Show the effective settings and where each comes from, or change the workspace's own.

    - `ftctl config show` lists every setting with its origin: default, workspace (the workspace's
      config.yaml, what stage options and `config set` kept), a --config file and line, env or --set.
    - `ftctl config set KEY VALUE` keeps a value in the workspace's settings (checked as --set is).
    - `ftctl config unset KEY` removes it there (back to the value below: --config or the default).

    Precedence, lowest first: defaults, workspace, --config, FTCTL_<SECTION>__<KEY>, --set."""
    from ftctl.errors import UsageError

    if action not in ACTIONS:
        raise UsageError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    wanted = {"show": (False, False), "set": (True, True), "unset": (True, False)}[action]
    if (key is not None, value is not None) != wanted and not (action == "show" and value is None):
        usage = {"show": "config show [KEY]", "set": "config set KEY VALUE", "unset": "config unset KEY"}
        raise UsageError(f"usage: ftctl {usage[action]}")
    if action == "show":
        _show(ctx, key)
    elif action == "set":
        assert key is not None and value is not None
        _set(ctx, key, value)
    else:
        assert key is not None
        _unset(ctx, key)


def _check_key(key: str) -> None:
    from ftctl.config import _settings, suggest_keys
    from ftctl.errors import ConfigError

    if key not in _settings():
        meant = suggest_keys(key)
        hint = f" (did you mean {' or '.join(meant)}?)" if meant else ""
        raise ConfigError(f"invalid config: {key}: unknown key{hint}")


def _show(ctx: Context, key: str | None) -> None:
    from ftctl.ui import table

    flat = ctx.config.flat()
    if key is not None:
        _check_key(key)
        flat = {key: flat[key]}
    rows = [{"key": k, "value": v, "origin": ctx.config.origin(k)} for k, v in flat.items()]
    ctx.ui.emit({"settings": rows, "workspace_config": str(_layer(ctx))})
    cells = [[row["key"], json.dumps(row["value"]), row["origin"]] for row in rows]
    ctx.ui.result(table(cells, ["KEY", "VALUE", "ORIGIN"]))


def _layer(ctx: Context) -> Path:
    from ftctl.settings import layer_path

    return layer_path(ctx.workspace)


def _set(ctx: Context, key: str, raw: str) -> None:
    from ftctl import settings
    from ftctl.config import parse_override

    _check_key(key)
    _, value = parse_override(f"{key}={raw}", origin="config set")
    changed = settings.set_values(ctx.workspace, {key: value}, "config set")
    kept = settings.flatten(settings.read_layer(ctx.workspace))[key]
    if changed:
        ctx.ui.info(f"{key} = {json.dumps(kept)} (kept in {_layer(ctx)})")
    else:
        ctx.ui.info(f"{key} is {json.dumps(kept)} already")
    _note_above(ctx, key)
    ctx.ui.emit({"key": key, "value": kept, "changed": bool(changed)})


def _unset(ctx: Context, key: str) -> None:
    from ftctl import settings

    _check_key(key)
    try:
        old = settings.unset_value(ctx.workspace, key)
    except KeyError:
        ctx.ui.info(f"{key} is not set in {_layer(ctx)}: nothing to unset")
        ctx.ui.emit({"key": key, "changed": False})
        return
    ctx.ui.info(f"{key}: removed {json.dumps(old)} from {_layer(ctx)}")
    ctx.ui.emit({"key": key, "changed": True, "removed": old})


def _note_above(ctx: Context, key: str) -> None:
    origin = ctx.config.origin(key)
    if origin not in ("default",) and not origin.startswith("workspace"):
        ctx.ui.warn(f"{key} is also set by {origin}, which ranks above the workspace's settings")


@command(PANEL)
def init(
    ctx: Context,
    backend: Optional[str] = typer.Option(
        None, "--backend", "-b", help="Start from this backend's defaults: local or azureml."
    ),
    from_: Optional[str] = typer.Option(
        None,
        "--from",
        metavar="CONFIG",
        help="Start from this config: a shipped one by name (local-quickstart, azureml-phi4-ultrachat, "
        "...) or a file.",
    ),
    output: Path = typer.Option(Path(INIT_FILE), "--output", "-o", help="The file to write."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace the file if it exists."),
) -> None:
    """Write a commented starting config to edit, then pass it with --config (or FTCTL_CONFIG).

    The shipped configs come with ftctl (no checkout needed): the local quickstart (the built-in
    defaults) and Azure ML ones (the headline: azureml-phi4-ultrachat, Phi-4 on an A100 cluster)."""
    from ftctl.errors import UsageError
    from ftctl.state import atomic_write_text

    text, origin = _starting_config(backend, from_)
    if output.exists() and not force:
        raise UsageError(f"{output} exists already", hint="pass --force to replace it, or -o another file")
    header = f"# Written by `ftctl init` from {origin}. Use it: ftctl --config {output} run\n"
    atomic_write_text(output, header + text)
    ctx.ui.info(f"wrote {output} (from {origin}); edit it, then: ftctl --config {output} run")
    ctx.ui.emit({"written": str(output), "from": origin})


def shipped_configs() -> dict[str, Path]:
    """The configs that come with ftctl (package data), by name."""
    from importlib.resources import files

    folder = Path(str(files("ftctl") / "resources" / "configs"))
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))}


def _starting_config(backend: str | None, source: str | None) -> tuple[str, str]:
    """(the text, where it came from) of the config `init` starts from."""
    from ftctl.backends import NAMES
    from ftctl.config import load_config
    from ftctl.errors import UsageError

    if backend is not None and backend not in NAMES:
        raise UsageError(f"--backend must be {' or '.join(NAMES)} (got {backend!r})")
    shipped = shipped_configs()
    if source is None:
        source = "azureml-phi4-ultrachat" if backend == "azureml" else "local-quickstart"
    path = shipped.get(source.removesuffix(".yaml")) if "/" not in source else None
    if path is None:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UsageError(
                f"--from {source}: no such file, and not a shipped config ({', '.join(shipped)})"
            )
    loaded: Any = load_config(path, environ={})  # a config that does not load is no start (exit 2)
    if backend is not None and loaded.values.backend != backend:
        raise UsageError(f"--from {source} is a {loaded.values.backend} config, not {backend}")
    return path.read_text(encoding="utf-8"), (source if path in shipped.values() else str(path))
