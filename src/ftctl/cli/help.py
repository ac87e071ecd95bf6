"""`ftctl --help`, and every command's: Typer's layout (usage, help text, boxed panels of arguments,
options and commands, the examples), drawn with string work instead of Rich.

Typer draws its help with Rich, and importing Rich's console, table, panel and markdown modules was half
of `ftctl --help` (measured on a 2-core machine, medians of 20 alternating pairs: 159 ms with Rich, 71 ms
drawn here; Click's plain help 78 ms). Here the panels are the same, titled by each command's
`rich_help_panel`, with Typer's colours on a terminal (Click strips them when the output is not one;
NO_COLOR turns them off) and ASCII boxes where the output's encoding has no box-drawing characters. The
option help is what Click's help records say, as in docs/cli.md. Widths count characters (the help texts
are ASCII). Usage errors are still drawn by Typer with Rich: they are rare, and the import is nothing
beside a mistyped command.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Iterator, Sequence
from typing import Any

import typer
import typer.core

# Typer's styles (typer.rich_utils) as ANSI SGR codes.
STYLES = {
    "option": "1;36",  # --long
    "switch": "1;32",  # -s
    "negative": "1;35",  # --no-flag
    "type": "1;33",  # <str>, PATH
    "usage": "33",
    "bold": "1",
    "dim": "2",
    "required": "31",
}
# An option, a switch or a <type> inside text: highlighted as Typer's OptionHighlighter does.
TOKEN = re.compile(
    r"(?<![\w-])(?P<option>--[\w-]+)(?![\w-])|(?<![\w-])(?P<switch>-\w)(?![\w-])|(?P<type><[^>\s]+>)"
)
EXTRAS = re.compile(r"\s+(\[[^\]]*\])$")  # Click's "[env var: X; default: Y]" at the end of a help text
BOX = "╭─╮│╰╯"
ASCII_BOX = "+-+|++"  # for an output whose encoding has no box-drawing characters (as Rich does)
MAX_WIDTH = 1000  # wider than any terminal; COLUMNS=99999999999 drew boxes until memory ran out
MIN_HELP_WIDTH = 20  # a narrower terminal gets a panel wider than itself rather than one word per line


class DrawnHelp:
    """Put first among a Typer command class's bases: its help is drawn here."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        formatter.write(render(self, ctx))


class Command(DrawnHelp, typer.core.TyperCommand):
    pass


class Group(DrawnHelp, typer.core.TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # `ftctl` alone: the help on stdout and exit 2, as Typer's Rich help does (its error handler
        # prints nothing for this case: it expects the help printed already).
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            typer.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(2)
        return super().parse_args(ctx, args)


class Painter:
    """ANSI colours (or none), and the box characters the output can show."""

    def __init__(self, color: bool, box: str = BOX) -> None:
        self.color = color
        self.box = box

    def __call__(self, text: str, style: str) -> str:
        return f"\x1b[{STYLES[style]}m{text}\x1b[0m" if self.color and text else text

    def tokens(self, text: str, base: str | None = None) -> str:
        """Options, switches and <types> in `text` highlighted; the rest in `base` (if any)."""
        out, at = [], 0
        for found in TOKEN.finditer(text):
            out += [self(text[at : found.start()], base) if base else text[at : found.start()]]
            out += [self(found.group(), str(found.lastgroup))]
            at = found.end()
        out.append(self(text[at:], base) if base else text[at:])
        return "".join(out)


def render(command: Any, ctx: Any) -> str:
    width = terminal_width()
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    paint = Painter(color=not os.environ.get("NO_COLOR"), box=BOX if can_encode(BOX, encoding) else ASCII_BOX)
    usage = " ".join(command.get_usage(ctx).split()).removeprefix("Usage: ")
    lines = ["", f" {paint('Usage:', 'usage')} {paint.tokens(usage, 'bold')}", ""]
    if command.help:
        lines += [*help_text(inspect.cleandoc(command.help), width, paint), ""]
    for title, rows in param_panels(command, ctx):
        lines += panel(title, rows, width, paint)
    if isinstance(command, Group):
        lines += command_panels(command, ctx, width, paint)
    if command.epilog:
        lines += [
            "",
            *(f" {paint.tokens(line)}" for line in wrap_lines(inspect.cleandoc(command.epilog), width - 2)),
        ]
    # A character the output's encoding lacks (in a help text) becomes "?" rather than a traceback.
    return ("\n".join(lines) + "\n").encode(encoding, errors="replace").decode(encoding)


def can_encode(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def terminal_width() -> int:
    """Typer's: TERMINAL_WIDTH if set, else the terminal's (COLUMNS, or 80 when not a terminal); at most
    MAX_WIDTH."""
    given = os.environ.get("TERMINAL_WIDTH", "")
    width = int(given) if given.isdigit() and int(given) > 0 else shutil.get_terminal_size((80, 24)).columns
    return min(width, MAX_WIDTH)


def wrap_lines(text: str, width: int, *, break_words: bool = False) -> list[str]:
    """Each line of `text` wrapped at `width` (a word longer than that broken only if `break_words`); a
    list item's ("- ") continuation lines indented under its text."""
    out: list[str] = []
    for line in text.splitlines() or [""]:
        hang = "  " if line.startswith("- ") else ""
        out += textwrap.wrap(
            line, max(width, 1), subsequent_indent=hang, break_long_words=break_words, break_on_hyphens=False
        ) or [""]
    return out


def help_text(text: str, width: int, paint: Painter) -> list[str]:
    """The command's help: the first paragraph plain, the others dim (Typer's styles)."""
    first, *rest = text.split("\n\n")
    lines = [f" {paint.tokens(line)}" for line in wrap_lines(first, width - 2)]
    for paragraph in rest:
        lines += ["", *(f" {paint.tokens(line, 'dim')}" for line in wrap_lines(paragraph, width - 2))]
    return lines


Cell = tuple[str, str]  # text, style
Row = tuple[list[Cell], str]  # the fixed columns, then the help text (highlighted when drawn)


def param_panels(command: Any, ctx: Any) -> Iterator[tuple[str, list[Row]]]:
    """(title, rows): arguments first, then options, each in the panel its parameter names."""
    arguments: dict[str, list[Any]] = {}
    options: dict[str, list[Any]] = {"Options": []}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        is_argument = isinstance(param, typer.core.TyperArgument)
        panels = arguments if is_argument else options
        title = getattr(param, "rich_help_panel", None) or ("Arguments" if is_argument else "Options")
        panels.setdefault(title, []).append(param)
    for title, params in [*arguments.items(), *options.items()]:
        required = any(param.required for param in params)
        rows = [param_row(param, ctx, required) for param in params]
        if rows:
            yield title, rows


def param_row(param: Any, ctx: Any, star_column: bool) -> Row:
    """Typer's columns: [*], long names, short names (or an argument's name), --no-names, -n names,
    type; then the help with Click's [env var; default; required] after it."""
    argument = isinstance(param, typer.core.TyperArgument)
    name = str(getattr(param, "display_name_raw", param.name)) if argument else ""
    long = [opt for opt in param.opts if opt.startswith("--")]
    short = [name] if argument else [opt for opt in param.opts if not opt.startswith("--")]
    negative_long = [opt for opt in param.secondary_opts if opt.startswith("--")]
    negative_short = [opt for opt in param.secondary_opts if not opt.startswith("--")]
    kind = (
        param.display_type_rich(ctx=ctx) if hasattr(param, "display_type_rich") else param.make_metavar(ctx)
    )
    cells: list[Cell] = [
        (",".join(long), "option"),
        (",".join(short), "switch" if not argument else "bold"),
        (",".join(negative_long), "negative"),
        (",".join(negative_short), "negative"),
        (kind or "", "type"),
    ]
    if star_column:
        cells.insert(0, ("*" if param.required else "", "required"))
    record = param.get_help_record(ctx)
    return cells, (record[1] if record else "")


def command_panels(group: Group, ctx: Any, width: int, paint: Painter) -> list[str]:
    """The commands, in the panels their `rich_help_panel` names, the names aligned across panels."""
    panels: dict[str, list[Any]] = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None and not command.hidden:
            panels.setdefault(getattr(command, "rich_help_panel", None) or "Commands", []).append(command)
    name_width = max((len(c.name or "") for commands in panels.values() for c in commands), default=0)
    lines = []
    for title, commands in panels.items():
        rows: list[Row] = []
        for command in commands:
            summary = command.short_help or inspect.cleandoc(command.help or "").split("\n\n")[0]
            rows.append(([((command.name or "").ljust(name_width), "option")], summary))
        lines += panel(title, rows, width, paint)
    return lines


def panel(title: str, rows: Sequence[Row], width: int, paint: Painter) -> list[str]:
    """A box titled `title` holding a table: fixed columns as wide as their widest cell (a column empty in
    every row is left out), two spaces apart, then the help column wrapped in what is left."""
    used = [i for i in range(len(rows[0][0])) if any(cells[i][0] for cells, _ in rows)]
    widths = {i: max(len(cells[i][0]) for cells, _ in rows) for i in used}
    fixed = sum(widths.values()) + 2 * len(used)
    help_width = max(width - 4 - fixed, MIN_HELP_WIDTH)
    inner = fixed + help_width
    corner, rule, corner_right, side, bottom, bottom_right = tuple(paint.box)
    top = f"{corner}{rule} {title} " + rule * max(inner + 4 - len(title) - 5, 0) + corner_right
    lines = [paint(top[:3], "dim") + title + paint(top[3 + len(title) :], "dim")]
    edge = paint(side, "dim")
    for cells, text in rows:
        for k, line in enumerate(wrap_help(text, help_width)):
            left = "".join(
                (
                    paint(cells[i][0], cells[i][1]) + " " * (widths[i] - len(cells[i][0]))
                    if k == 0
                    else " " * widths[i]
                )
                + "  "
                for i in used
            )
            lines.append(f"{edge} {left}{highlight_help(line, paint)}{' ' * (help_width - len(line))} {edge}")
    lines.append(paint(bottom + rule * (inner + 2) + bottom_right, "dim"))
    return lines


def wrap_help(text: str, width: int) -> list[str]:
    """A help text wrapped at `width` (inside a box: a longer word is broken), its trailing [extras] kept
    whole on one line where they fit."""
    extras = EXTRAS.search(text)
    if extras and len(extras.group(1)) <= width:  # no-break spaces in them (textwrap splits on ASCII space)
        text = text[: extras.start()] + "  " + extras.group(1).replace(" ", "\xa0")
    return [line.replace("\xa0", " ") for line in wrap_lines(text, width, break_words=True)]


def highlight_help(line: str, paint: Painter) -> str:
    """A help line: options highlighted, and Click's [extras] dim."""
    start = line.rfind("[")
    if start >= 0 and line.endswith("]") and EXTRAS.search(" " + line[start:]):
        return paint.tokens(line[:start]) + paint(line[start:], "dim")
    return paint.tokens(line)
