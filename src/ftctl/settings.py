"""The workspace's own settings: <workspace>/config.yaml, the layer above the defaults and below an
explicit --config, FTCTL_* environment variables and --set (see ftctl.config).

What a user gives as a stage option (`prepare-data --dataset ./mydata`, `pick-model --model X`) or with
`ftctl config set` is kept here, so every later command (`status`, `run`) agrees with it. Each change is
checked as the same setting anywhere else is (and an unknown key gets a did-you-mean) before the file is
replaced, atomically: a refused value leaves the file as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ftctl.config import WORKSPACE_CONFIG, _read_file, flatten, validate_layer
from ftctl.state import atomic_write_text

HEADER = """\
# The settings of this ftctl workspace, kept by ftctl: stage options (`ftctl prepare-data --dataset
# ...`, `ftctl pick-model --model ...`) and `ftctl config set KEY VALUE` write here, `ftctl config
# unset KEY` removes a key. Above the built-in defaults, below --config, FTCTL_* variables and --set.
# `ftctl config show` prints every value with where it came from.
"""


def layer_path(workspace: Path) -> Path:
    return workspace / WORKSPACE_CONFIG


def read_layer(workspace: Path) -> dict[str, Any]:
    """The workspace's settings as nested sections ({} when it has none)."""
    path = layer_path(workspace)
    return _read_file(path)[0] if path.is_file() else {}


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = tree
    for part in sections:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def _unset(tree: dict[str, Any], key: str) -> bool:
    *sections, leaf = key.split(".")
    node: Any = tree
    for part in sections:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return False
    del node[leaf]
    # drop sections left empty, innermost first
    for depth in range(len(sections), 0, -1):
        parent: Any = tree
        for part in sections[: depth - 1]:
            parent = parent[part]
        if parent.get(sections[depth - 1]) == {}:
            del parent[sections[depth - 1]]
    return True


def _nested(values: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in values.items():
        _set(tree, key, value)
    return tree


def _write(workspace: Path, tree: Mapping[str, Any], origin: str) -> None:
    validate_layer(tree, origin)  # ConfigError (exit 2) before anything is written
    workspace.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(dict(tree), sort_keys=True, default_flow_style=False) if tree else ""
    atomic_write_text(layer_path(workspace), HEADER + body)


def set_values(workspace: Path, values: Mapping[str, Any], origin: str) -> dict[str, tuple[Any, Any]]:
    """Keep `values` (key path -> value) in the workspace's settings. Returns key -> (the value the
    layer held before, None if none; the new value) for each key whose kept value changed."""
    tree = read_layer(workspace)
    before = flatten(tree)
    # as the setting reads them (`1e-4` is a number, `precision: 16` the word), refused if invalid
    checked = flatten(validate_layer(_nested(values), origin).model_dump(mode="json", by_alias=True))
    changed = {}
    for key in values:
        value = checked[key]
        if key not in before or before[key] != value:
            changed[key] = (before.get(key), value)
        _set(tree, key, value)
    if changed:
        _write(workspace, tree, origin)
    return changed


def unset_value(workspace: Path, key: str) -> Any:
    """Remove `key` from the workspace's settings; returns the value it had (KeyError: it had none)."""
    tree = read_layer(workspace)
    old = flatten(tree).get(key, KeyError)
    if old is KeyError or not _unset(tree, key):
        raise KeyError(key)
    _write(workspace, tree, "config unset")
    return old
