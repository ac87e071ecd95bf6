"""ftctl's own pydantic models are built without pydantic's search for plugins.

The first model pydantic builds in a process looks for plugins in the entry points of every installed
distribution: ~25 ms of every ftctl command with the ~220 distributions of an `ftctl[local,azure]`
environment (bench/README.md, section 1). ftctl's models (ftctl.config, ftctl.records) use no plugin, so
their modules define them between `suspend()` and `resume()`, with PYDANTIC_DISABLE_PLUGINS set, as Typer
does while it builds its parameter adapters. A model another library builds later finds the user's
plugins as usual: pydantic searches then.
"""

from __future__ import annotations

import os

NAME = "PYDANTIC_DISABLE_PLUGINS"
_held: list[str | None] = []  # the values to put back, innermost last (one module may import another)


def suspend() -> None:
    _held.append(os.environ.get(NAME))
    os.environ[NAME] = "__all__"


def resume() -> None:
    previous = _held.pop()
    if previous is None:
        os.environ.pop(NAME, None)
    else:
        os.environ[NAME] = previous
