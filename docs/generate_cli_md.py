"""Write docs/cli.md, the ftctl command reference, from the CLI's own help text.

    python docs/generate_cli_md.py            # rewrite docs/cli.md
    python docs/generate_cli_md.py --check    # exit 1 if docs/cli.md is out of date

Everything comes from the commands themselves: their help (docstrings), usage, options (the same help
records `--help` prints) and examples (the epilogs, ftctl.cli.examples). A test runs `render()` and
compares it with the file, so the reference cannot drift from `ftctl <command> --help`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "cli.md"

HEADER = """\
# ftctl command reference

Generated from the CLI's help text by `python docs/generate_cli_md.py`; do not edit by hand (a test
fails when it is out of date). The same text, with the examples, is what `ftctl <command> --help`
prints.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _options(command: Any, ctx: Any) -> list[str]:
    rows = []
    for param in command.params:
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        rows.append(f"| `{names}` | {_cell(help_text)} |")
    rows.append("| `-h, --help` | Show the help and exit. |")
    return ["| option | description |", "|---|---|", *rows]


def _examples(command: Any) -> list[str]:
    epilog = (command.epilog or "").strip()
    if not epilog:
        return []
    body = [line[2:] if line.startswith("  ") else line for line in epilog.splitlines()[1:]]
    return ["Examples:", "", "```bash", *body, "```"]


def render() -> str:
    import typer.main

    from ftctl.cli.app import app

    root = typer.main.get_command(app)
    root_ctx = root.make_context("ftctl", [], resilient_parsing=True)
    lines = [HEADER]
    lines += [
        "## Global options",
        "",
        f"`ftctl {' '.join(root.collect_usage_pieces(root_ctx))}`",
        "",
        " ".join((root.help or "").split()),
        "",
        "Global options go before the command: `ftctl --json --workspace DIR status`.",
        "",
        *_options(root, root_ctx),
        "",
        "## Commands",
        "",
        "| command | group | what it does |",
        "|---|---|---|",
    ]
    commands = list(getattr(root, "commands", {}).items())
    for name, command in commands:
        summary = (command.help or "").strip().split("\n\n")[0]
        lines.append(
            f"| [`ftctl {name}`](#ftctl-{name}) | {command.rich_help_panel or ''} | {_cell(summary)} |"
        )
    for name, command in commands:
        ctx = command.make_context(name, [], parent=root_ctx, resilient_parsing=True)
        paragraphs = [" ".join(p.split()) for p in (command.help or "").strip().split("\n\n")]
        lines += [
            "",
            f"## ftctl {name}",
            "",
            f"`ftctl {name} {' '.join(command.collect_usage_pieces(ctx))}`",
            "",
            *[line for p in paragraphs for line in (p, "")],
            *_options(command, ctx),
        ]
        examples = _examples(command)
        if examples:
            lines += ["", *examples]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run `python docs/generate_cli_md.py`", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
