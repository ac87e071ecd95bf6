"""`--help` as drawn by ftctl.cli.help: Typer's panels without Rich, every option's help record in it, boxes
that close at any width, colours only on a terminal."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import typer.main

from ftctl.cli.app import app
from ftctl.cli.help import Painter, render
from harness import IMPORT_GUARD, Ftctl

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def commands() -> list[str]:
    root = typer.main.get_command(app)
    return root.list_commands(root.make_context("ftctl", [], resilient_parsing=True))  # type: ignore[attr-defined]


def boxes_close(text: str) -> None:
    """Every panel line as wide as its panel's top edge, starting and ending on the border."""
    width = None
    for line in ANSI.sub("", text).splitlines():
        if line.startswith("╭"):
            width = len(line)
            assert line.endswith("╮"), line
        elif width is not None:
            assert len(line) == width, f"{len(line)} != {width}: {line!r}"
            assert line[0] in "│╰" and line[-1] in "│╯", line
            if line.startswith("╰"):
                width = None
    assert width is None, "a panel was not closed"


@pytest.mark.parametrize("columns", ["40", "80", "131"])
def test_every_command_s_help_has_its_options_help_records_and_closed_boxes(
    ftctl: Ftctl, monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    root = typer.main.get_command(app)
    root_ctx = root.make_context("ftctl", [], resilient_parsing=True)
    for name in ["", *commands()]:
        shown = ftctl(*([name] if name else []), "--help").stdout
        assert "\x1b[" not in shown, "colour codes in help that is not on a terminal"
        boxes_close(shown)
        command = root.get_command(root_ctx, name) if name else root  # type: ignore[attr-defined]
        ctx = command.make_context(
            name or "ftctl", [], parent=root_ctx if name else None, resilient_parsing=True
        )
        letters = "".join(shown.replace("│", " ").split())  # a word too long for a narrow column is broken
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if record:  # the help text, however it was wrapped
                assert "".join(record[1].split()) in letters, (name, param.name)
            for opt in [*param.opts, *param.secondary_opts]:
                assert opt in shown if opt.startswith("-") else True, (name, opt)
        if int(columns) >= 80:  # narrower, a panel may be wider than the terminal: still closed (above)
            assert max(len(line) for line in shown.splitlines()) <= int(columns)


def test_top_level_help_groups_commands_in_their_panels(
    ftctl: Ftctl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    shown = ftctl("--help").stdout
    titles = re.findall(r"╭─ (\w+) ─", shown)
    assert titles == ["Options", "Stages", "Pipeline", "Results", "Quality", "Settings"]
    # the command names are aligned across panels: their descriptions start in one column
    starts = {
        line.index(line.split()[2])
        for line in shown.splitlines()
        if re.match(r"│ (auth|run|logs|plan|init) ", line)
    }
    assert len(starts) == 1, starts
    assert (
        shown.index("Usage: ftctl [OPTIONS] COMMAND") < shown.index("╭─ Options") < shown.index("Examples:")
    )


def test_ftctl_alone_prints_the_help_on_stdout_and_exits_2(ftctl: Ftctl) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ftctl"], capture_output=True, text=True, env=ftctl.env(), cwd=ftctl.root
    )
    assert done.returncode == 2
    assert "Usage: ftctl [OPTIONS] COMMAND" in done.stdout and "╭─ Stages" in done.stdout
    assert done.stderr == ""


def test_help_imports_no_rich(ftctl: Ftctl) -> None:
    """Rich was half of `ftctl --help` (ftctl.cli.help); usage errors still use it."""
    for args in (["--help"], ["prepare-data", "--help"], ["config", "--help"]):
        _, imported = ftctl.imports(*args, of=["rich"])
        assert not imported, args
    alone = [sys.executable, "-c", IMPORT_GUARD, "rich"]  # `ftctl` with no argument at all
    done = subprocess.run(alone, capture_output=True, text=True, env=ftctl.env(), cwd=ftctl.root)
    assert done.returncode == 2 and "╭─ Stages" in done.stdout
    assert done.stdout.splitlines()[-1] == "IMPORTED []"
    done, imported = ftctl.imports("status", "--no-such-option", code=2, of=["rich"])
    assert "No such option" in done.stderr


def test_colours_on_a_terminal_follow_typer_s_styles() -> None:
    paint = Painter(color=True)
    line = paint.tokens("Use --set or -s with <str>, not re-run or 0-100.")
    assert (
        "\x1b[1;36m--set\x1b[0m" in line
        and "\x1b[1;32m-s\x1b[0m" in line
        and "\x1b[1;33m<str>\x1b[0m" in line
    )
    assert ANSI.sub("", line) == "Use --set or -s with <str>, not re-run or 0-100."
    assert line.count("\x1b[0m") == 3  # re-run and 0-100 are words, not options


def test_no_color_turns_colours_off(monkeypatch: pytest.MonkeyPatch) -> None:
    root = typer.main.get_command(app)
    ctx = root.make_context("ftctl", [], resilient_parsing=True)
    assert "\x1b[" in render(root, ctx)
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in render(root, ctx)


def test_extras_stay_whole_and_list_items_hang(ftctl: Ftctl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    shown = ftctl("--help").stdout
    assert "[env var: FTCTL_WORKSPACE; default: .ftctl]" in shown  # not split over two lines
    config = ftctl("config", "--help").stdout.splitlines()
    item = next(i for i, line in enumerate(config) if line.startswith(" - `ftctl config show`"))
    assert config[item + 1].startswith("   ") and not config[item + 1].startswith("   -")
