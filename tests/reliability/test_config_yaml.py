"""Hostile YAML in config files, --set values and environment variables.

Each case runs `python -m ftctl ... status` as a child process with a memory limit and a timeout, as a
user would: a config that explodes (a "billion laughs" of nested aliases, a value that contains itself,
thousands of nesting levels, a number of thousands of digits, a file that never ends) must be refused
quickly with exit 2 and one `error:` line naming the file (or the override), never hang, never eat the
machine's memory, never show a traceback. The child process is what keeps a regression from taking the
test run down with it.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import base_env

CHILD_MEMORY = 1 << 30  # address space of the child: a bomb that expands runs out long before this
CHILD_TIMEOUT_S = 20.0


def laughs_mapping(levels: int = 9, width: int = 10) -> str:
    """Nested aliases of mappings: `width ** levels` key paths from under 1 KiB of text."""
    lines = ["finetune:", "  k0: &a0 {" + ", ".join(f"x{j}: 1" for j in range(width)) + "}"]
    for i in range(1, levels):
        lines.append(f"  k{i}: &a{i} {{" + ", ".join(f"y{j}: *a{i - 1}" for j in range(width)) + "}")
    return "\n".join(lines) + "\n"


def laughs_list(levels: int = 9, width: int = 10) -> str:
    """The classic billion laughs: lists of aliases of lists, ending in a list-valued setting."""
    lines = ["l0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"compute:\n  allow_list: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def ftctl(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    began = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ftctl", "--workspace", str(tmp_path / "ws"), *args, "status"],
            capture_output=True,
            text=True,
            env=base_env(env),
            cwd=tmp_path,
            timeout=CHILD_TIMEOUT_S,
            preexec_fn=limit_child,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"ftctl {' '.join(args)} still running after {CHILD_TIMEOUT_S:g} s")
    return proc.returncode, proc.stderr, time.monotonic() - began


def assert_refused(code: int, stderr: str, *fragments: str) -> None:
    shown = f"exit {code}\n--- stderr\n{stderr[-3000:]}"
    assert code == 2, shown
    assert "Traceback" not in stderr and "unexpected" not in stderr, shown
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for fragment in fragments:
        assert fragment in stderr, f"missing {fragment!r}\n{shown}"


FILES = {
    # name: (file contents, what the error must say besides the file name)
    "billion-laughs-mapping": (laughs_mapping(), ["aliases expand", "values", "finetune.k"]),
    "billion-laughs-list": (laughs_list(), ["aliases expand", "values"]),
    "recursive-alias": ("finetune: &a {seed: 1, again: *a}\n", ["c.yaml:1: finetune", "contains itself"]),
    "recursive-list": ("compute:\n  allow_list: &a [x, *a]\n", ["compute.allow_list", "contains itself"]),
    "deep-flow-nesting": ("finetune:\n  seed: " + "[" * 5000 + "]" * 5000 + "\n", ["c.yaml:2"]),
    "deep-block-nesting": (
        "finetune:\n" + "".join(f"{' ' * i}k{i}:\n" for i in range(1, 600)) + " " * 600 + "1\n",
        ["c.yaml:", "levels deep"],
    ),
    "integer-of-5000-digits": (
        "finetune:\n  num_train_epochs: " + "9" * 5000 + "\n",
        ["c.yaml:2: finetune.num_train_epochs:"],
    ),
    "impossible-date": ("finetune:\n  seed: 2024-13-45\n", ["c.yaml:2: finetune.seed:"]),
    "bad-explicit-int-tag": ("finetune:\n  seed: !!int twelve\n", ["c.yaml:2: finetune.seed:"]),
    "bad-explicit-float-tag": ("score:\n  top_p: !!float lots\n", ["c.yaml:2: score.top_p:"]),
    "a-dataset-given-as-config": (
        "# not a config\n" * ((2 << 20) // 15) + "finetune:\n  seed: 1\n",
        ["larger than"],
    ),
}


@pytest.mark.parametrize("name", list(FILES))
def test_hostile_config_file_is_refused_quickly(name: str, tmp_path: Path) -> None:
    text, fragments = FILES[name]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    code, stderr, seconds = ftctl(tmp_path, "--config", str(path))
    assert_refused(code, stderr, str(path), *fragments)
    assert seconds < 10, f"took {seconds:.1f} s"


def test_config_that_never_ends_is_refused(tmp_path: Path) -> None:
    code, stderr, _ = ftctl(tmp_path, "--config", "/dev/zero")
    assert_refused(code, stderr, "/dev/zero", "larger than")


@pytest.mark.parametrize(
    ("how", "value", "fragments"),
    [
        ("--set", "compute.allow_list=&a [x, *a]", ["contains itself"]),
        ("env", "&a [x, *a]", ["contains itself"]),
        ("--set", "finetune.num_train_epochs=" + "9" * 5000, []),
        ("env", "9" * 5000, []),
    ],
)
def test_hostile_override_is_refused(tmp_path: Path, how: str, value: str, fragments: list[str]) -> None:
    if how == "--set":
        key = value.partition("=")[0]
        code, stderr, _ = ftctl(tmp_path, "--set", value)
        origin = f"{key} (from --set)"
    else:
        name = "FTCTL_COMPUTE__ALLOW_LIST" if value.startswith("&") else "FTCTL_FINETUNE__NUM_TRAIN_EPOCHS"
        code, stderr, _ = ftctl(tmp_path, env={name: value})
        origin = f"(from {name})"
    assert_refused(code, stderr, origin, *fragments)


def test_yaml_bomb_via_set_is_refused_for_its_size(tmp_path: Path) -> None:
    width = 10
    items = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
    items += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, 6)]
    code, stderr, _ = ftctl(tmp_path, "--set", f"compute.allow_list=[{', '.join(items)}]")
    assert_refused(code, stderr, "compute.allow_list (from --set)", "aliases expand", "values")
