"""Reading a config's YAML within bounds: PyYAML's safe loader (libyaml's when present), with every
key's line for messages, and refusals for what no config is (a megabyte of text, a YAML bomb of aliases,
deep nesting, a value no constructor can build). Imported only when there is YAML to read: status with
no config file and no overrides never needs PyYAML (15 ms of every command's start)."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

Malformed = yaml.YAMLError  # what PyYAML raises for text that is not YAML

# --- bounds ----------------------------------------------------------------------------------------
# A config is a few KiB with a few hundred values, nested three levels (section, key, list item).
YAML_MAX_NODES = 10_000  # keys and values once every alias is replaced by its anchor's content
YAML_MAX_DEPTH = 20  # nesting levels

MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *anchor`: may appear more than once in a mapping


def short(value: Any, limit: int = 40) -> str:
    """`value` as repr, cut to `limit` characters."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class Refused(Exception):
    """The YAML is well-formed but beyond the bounds (or unreadable as a value): `problem` at `key`
    (a key path, "" at the top) on `line` (1-based) of the text."""

    def __init__(self, problem: str, key: str, line: int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.key = key
        self.line = line


class Unreadable(Refused):
    """A scalar that no constructor can build (`2024-13-45`, `!!float lots`)."""


class _Loader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's parser when present: faster, and it stops at 1000 nesting
    levels itself). A value a constructor cannot build is a ConstructorError at its line, never a
    ValueError from deep inside PyYAML."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            kind = str(node.tag).rsplit(":", 1)[-1]
            raise ConstructorError(
                None, None, f"cannot read {short(node.value)} as {kind} ({exc})", node.start_mark
            ) from None


def _construct_int(loader: SafeConstructor, node: yaml.ScalarNode) -> Any:
    try:
        return loader.construct_yaml_int(node)
    except ValueError:  # more digits than int() reads from text (4300), or `!!int twelve`
        return loader.construct_scalar(node)  # the text: the model refuses it for what it is


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _measure(root: yaml.Node) -> dict[str, int]:
    """Key path -> line of every mapping key in the document, checking on the way that the document,
    with every alias replaced by its anchor's content, stays within YAML_MAX_NODES values and
    YAML_MAX_DEPTH levels, contains no alias to itself and no mapping with a key twice (PyYAML would keep
    the last value and lose the first without a word). The walk stops at the first value past a
    bound, so its cost is bounded too, whatever the aliases would expand to."""
    lines: dict[str, int] = {}
    seen: set[int] = set()
    open_nodes: set[int] = set()  # on the path from the root: meeting one again is a cycle
    count = 0

    def visit(node: yaml.Node, depth: int, path: str, where: tuple[str, int]) -> None:
        nonlocal count
        if id(node) in open_nodes:
            raise Refused("this value contains itself (a recursive alias)", *where)
        count += 1
        if count > YAML_MAX_NODES:
            if len(seen) < count - 1:
                problem = f"aliases expand to more than {YAML_MAX_NODES} values (a YAML bomb?)"
            else:
                problem = f"more than {YAML_MAX_NODES} values; a config has a few hundred"
            raise Refused(problem, *where)
        if depth > YAML_MAX_DEPTH:
            raise Refused(f"nested more than {YAML_MAX_DEPTH} levels deep", *where)
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            return
        open_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}  # (tag, text) of each scalar key -> its line
            for key_node, value_node in node.value:
                visit(key_node, depth + 1, path, where)
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
                sub = f"{path}.{name}" if path else name
                line = key_node.start_mark.line + 1
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != MERGE_TAG:
                    # PyYAML keeps the last of two equal keys: the first one's value would be lost.
                    same = (str(key_node.tag), name)
                    if same in first:
                        raise Refused(f"duplicate key (first at line {first[same]})", sub, line)
                    first[same] = line
                lines[sub] = line
                # Errors name at most section.key: deeper paths inside an expansion say little.
                visit(value_node, depth + 1, sub, (sub, line) if sub.count(".") < 2 else where)
        else:
            for item in node.value:
                visit(item, depth + 1, path, where)
        open_nodes.discard(id(node))

    visit(root, 0, "", ("", root.start_mark.line + 1))
    return lines


def load(text: str) -> tuple[Any, dict[str, int]]:
    """One YAML document: (its value, key path -> line). Raises yaml.YAMLError for malformed YAML,
    Refused for YAML beyond the bounds and Unreadable for a value no constructor can build."""
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # the pure-Python parser, without libyaml's own depth limit
            raise Refused(f"nested more than {YAML_MAX_DEPTH} levels deep", "", 1) from None
        if node is None:
            return None, {}
        lines = _measure(node)
        try:
            return loader.construct_document(node), lines
        except yaml.MarkedYAMLError as exc:
            if exc.problem_mark is None:
                raise
            line = exc.problem_mark.line + 1
            keys = [key for key, at in lines.items() if at == line]
            key = max(keys, key=lambda k: k.count("."), default="")
            raise Unreadable(exc.problem or "invalid value", key, line) from None
    finally:
        loader.dispose()
