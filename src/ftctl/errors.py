"""Typed errors. The CLI maps them to exit codes in one place (ftctl.cli.app).

Exit codes: 0 ok, 1 a failure at run time (job failed, endpoint down or unreachable, port in use, a
host or the hub that cannot be reached), 2 bad input (config, arguments, data, a missing upstream stage).
"""

from __future__ import annotations


class FtctlError(Exception):
    """An expected failure: printed as one message (plus a hint), never as a traceback."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(FtctlError):
    """Bad input from the user: arguments, config, data files."""

    exit_code = 2


class ConfigError(UsageError):
    """A config file or override is invalid; the message names the key path (and file)."""


class DataError(UsageError):
    """A dataset is unusable; the message names the file and line."""


class StateError(UsageError):
    """The stage-state file is unreadable or a stage's preconditions do not hold."""


class UpstreamNotReady(StateError):
    """A stage was asked to run before the stages it depends on succeeded."""


class LockTimeout(FtctlError):
    """Another ftctl process holds the workspace lock."""


class StageFailed(FtctlError):
    """A stage ran and failed at run time (training job failed, endpoint unreachable...)."""


# --- control flow (not failures) --------------------------------------------------------------------


class Detached(Exception):
    """Raised by a stage that started long-running work and, as asked (--no-wait), does not wait.

    The runner leaves the stage `running` with what it recorded; the next run of the stage re-attaches.
    """
