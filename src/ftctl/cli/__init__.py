"""The command line. `main` is the `ftctl` entry point; the commands themselves are in ftctl.cli.app."""

from __future__ import annotations

import os
import sys

from ftctl import collector, exiting


def main() -> None:
    """`ftctl`: load the commands and run one, then end as Python does less its teardown of every
    module (ftctl.exiting): after a stage that loaded torch, transformers or MLflow that teardown took
    1.3-1.4 s of a 2-core machine, every time. (Tests that run the app inside pytest call
    ftctl.cli.app.main, which returns.)

    A Ctrl-C while the commands are still loading ends ftctl as a Ctrl-C anywhere else does ("interrupted",
    exit 130, no traceback): nothing has been read or written yet. Python 3.11 reports a KeyboardInterrupt
    that lands in a class's `__set_name__` (functools.cached_property does that work, e.g. in the
    standard library's ipaddress) as a RuntimeError, so the interrupt is looked for along the chain."""
    _open_closed_standard_streams()
    exiting.raise_on_sigterm()  # `kill PID` cleans up as a Ctrl-C does (exit 143)
    collector.fewer_collections()  # the imports ahead allocate much that stays (ftctl.collector)
    try:
        from ftctl.cli.app import main as run
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        said, code = exiting.interrupted_as(_interrupted(exc, exiting.Terminated))
        print(said, file=sys.stderr)
        sys.exit(code)
    try:
        run()
    except SystemExit as exc:
        code = exiting.exit_code(exc.code)
    except OSError as exc:
        if exc.filename is not None or _debug():  # a file's error, outside every command
            raise
        # What a command writes goes through its error handling; the help and the usage text (`--help >
        # /dev/full`) are written before any command runs.
        print(f"error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        code = 1
    else:
        code = 0
    exiting.exit_now(code)


def _debug() -> bool:
    """--debug or FTCTL_DEBUG (as Typer reads a flag's variable), for an error outside every command."""
    given = os.environ.get("FTCTL_DEBUG", "").strip().lower()
    return "--debug" in sys.argv or given in ("1", "true", "t", "yes", "y", "on")


def _open_closed_standard_streams() -> None:
    """An output the caller closed (`ftctl status >&-`) is opened on /dev/null: what the caller discards,
    every command can still write (status failed on `None.isatty()`), and no file ftctl opens later (the
    state file, a log) gets descriptor 1 or 2, where what ftctl or a process it starts prints would be
    written into it. A closed stdin stays closed: the commands that read it say so (exit 2)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
            setattr(sys, name, open(fd, "w", closefd=False))  # noqa: SIM115 - for the process's life


def _interrupted(exc: BaseException, kind: type[BaseException] = KeyboardInterrupt) -> bool:
    """True when `exc` is a KeyboardInterrupt (or `kind`), or was raised while handling or because of one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
