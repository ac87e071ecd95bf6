"""Found by trying `--help` as a hostile user would:
- on a terminal whose encoding has no box-drawing characters (PYTHONIOENCODING=latin-1, an old locale),
  ftctl's own help renderer ended in a UnicodeEncodeError traceback where Typer's Rich help had drawn
  ASCII boxes. The help must print, whatever the output encoding;
- `ftctl --help > /dev/full` ended in an OSError traceback (with Rich's help too): one line and exit 1,
  as a command's own output error is;
- COLUMNS=99999999999 (or TERMINAL_WIDTH) ended in a MemoryError traceback (with Rich's help too): the
  boxes were drawn that wide. The help is drawn at most MAX_WIDTH wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftctl.cli.help import MAX_WIDTH
from harness import Ftctl


@pytest.mark.parametrize("encoding", ["latin-1", "ascii", "cp1252", "utf-8"])
def test_help_prints_in_any_output_encoding(ftctl: Ftctl, encoding: str) -> None:
    env = {**ftctl.env(), "PYTHONIOENCODING": encoding, "COLUMNS": "90"}
    for args in (["--help"], ["config", "--help"], []):
        done = subprocess.run(
            [sys.executable, "-m", "ftctl", *args], capture_output=True, env=env, cwd=ftctl.root
        )
        assert done.returncode == (2 if not args else 0), done.stderr.decode(errors="replace")
        assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
        shown = done.stdout.decode(encoding)
        assert "Usage: ftctl" in shown and "Options" in shown
        boxed = [line for line in shown.splitlines() if line.startswith(("╭", "+-"))]
        assert boxed, shown
        if encoding != "utf-8":
            assert all(line.startswith("+-") for line in boxed), boxed[0]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_help_to_a_full_device_is_one_line_and_exit_1(ftctl: Ftctl) -> None:
    for args in (["--help"], ["submit", "--help"], []):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "ftctl", *args], stdout=full, stderr=subprocess.PIPE, text=True,
                env=ftctl.env(), cwd=ftctl.root,
            )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert done.stderr == "error: cannot write the output: No space left on device\n", done.stderr
    for debug in (["--debug", "--help"], ["--help"]):  # the traceback, when asked for (flag or variable)
        env = {**ftctl.env(), "FTCTL_DEBUG": "1"} if debug == ["--help"] else ftctl.env()
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "ftctl", *debug], stdout=full, stderr=subprocess.PIPE, text=True,
                env=env, cwd=ftctl.root,
            )  # fmt: skip
        assert done.returncode == 1 and "Traceback" in done.stderr and "OSError" in done.stderr, done.stderr


@pytest.mark.parametrize("variable", ["COLUMNS", "TERMINAL_WIDTH"])
def test_a_huge_terminal_width_draws_the_help_at_most_max_width_wide(ftctl: Ftctl, variable: str) -> None:
    env = {**ftctl.env(), variable: "99999999999"}
    done = subprocess.run(
        [sys.executable, "-m", "ftctl", "--help"], capture_output=True, text=True, env=env, cwd=ftctl.root,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    widths = [len(line) for line in done.stdout.splitlines()]
    assert max(widths) == MAX_WIDTH, max(widths)  # the panels fill it, no line is wider
