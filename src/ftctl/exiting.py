"""Ending a process as Python does, less its teardown of every module.

Python's own end joins the non-daemon threads, runs the atexit handlers (logging's flush, MLflow's
pending writes, weakref finalizers such as TemporaryDirectory's clean-up), flushes stdout and stderr, and
then tears down every module it imported, one by one. That last part does nothing a user can see, and
once torch, transformers and MLflow are loaded it is the slow part: 1.3-1.4 s of a 2-core machine at the
end of `ftctl run` (3,864 modules), and in a child forked by the warm process it would also write to
(so copy) every page it shares with its parent. multiprocessing's forked children end the same way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from typing import NoReturn


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, `timeout`, a service manager or CI runner stopping ftctl), raised in the main
    thread where Python raises KeyboardInterrupt for a Ctrl-C: being one, it takes every clean-up path a
    Ctrl-C takes (temp files removed, helpers stopped, the lock released, a job left running in the
    background), and the command ends "terminated", exit 143 (128 + 15)."""


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises Terminated, unless something else already handles it."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminated)


def sigterm_as_default() -> None:
    """SIGTERM ends this process at once again: for a process forked from ftctl's (a prepare-data
    helper), which its parent stops with SIGTERM and which has nothing of its own to clean up."""
    if signal.getsignal(signal.SIGTERM) is _terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


def interrupted_as(terminated: bool) -> tuple[str, int]:
    """What an interrupted command says and its exit code: SIGTERM's, else Ctrl-C's."""
    return ("terminated", 143) if terminated else ("interrupted", 130)


def exit_code(value: object) -> int:
    """The status `SystemExit(value)` ends a process with (a message is printed and means 1)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def exit_now(code: int, *, interrupted: bool = False) -> NoReturn:
    """Python's orderly end, then `os._exit(code)`; `interrupted`: end by SIGINT, as Python does after
    an unhandled KeyboardInterrupt."""
    shutdown = getattr(threading, "_shutdown", None)  # joins the non-daemon threads, as Python does
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader that left: nothing more to tell it
            stream.flush()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)
