"""The `ftctl` entry point. Commands live in small modules; importing them registers them on `app`."""

from __future__ import annotations

# Registration order is the order of `ftctl --help`: the stages, the pipeline commands, results.
# isort: off
from ftctl.cli import stage_commands  # noqa: F401
from ftctl.cli import pipeline_commands  # noqa: F401
from ftctl.cli import logs_commands  # noqa: F401
from ftctl.cli import insight_commands  # noqa: F401
from ftctl.cli import quality_commands  # noqa: F401
from ftctl.cli import config_commands  # noqa: F401
from ftctl.cli import export_commands  # noqa: F401

# isort: on
from ftctl.cli.common import app
from ftctl.cli.examples import add_examples

add_examples(app)  # the Examples section of every command's --help

__all__ = ["app", "main"]


def main() -> None:
    app(prog_name="ftctl")


if __name__ == "__main__":
    main()
