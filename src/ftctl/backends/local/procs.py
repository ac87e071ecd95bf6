"""Detached processes (training jobs, endpoint servers) that outlive the ftctl command starting them.

A process is recorded by its *identity*, never by its pid alone: {"pid", "start" (the kernel's start
time, clock ticks since boot, from /proc/<pid>/stat), "boot" (the boot id), "cmdline", "pgid"}. Pids
are reused: a recorded pid whose process has ended may now belong to anything else, so before ftctl
trusts, follows or signals a recorded process it checks that the pid still carries the same start
time and command line (`alive`). A pid that does not is an ended process, and is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ftctl.state import open_log
from ftctl.state import proc_stat as _stat  # the fields of /proc/<pid>/stat (state first)

Identity = dict[str, Any]


class Child(Protocol):
    """A process this one started: a subprocess.Popen, or a warm.WarmChild (forked by the warm process)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...


# Children started by this process: polled so a finished child is not mistaken for a live one (a zombie
# still answers kill(pid, 0)).
_children: dict[int, Child] = {}


def spawn(
    command: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> int:
    """Start `command` in its own session (immune to the terminal closing), output to `log_path`.

    A served module (see warm.py) is forked by the warm process when FTCTL_WARM names one."""
    from ftctl.backends.local import warm

    env = warm.environ(env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open_log(log_path) as log, open(os.devnull, "rb") as devnull:
        forked = None
        if preexec_fn is None:
            stdio = [devnull.fileno(), log.fileno(), log.fileno()]
            forked = warm.launch(command, stdio=stdio, cwd=cwd, env=env, pass_fds=pass_fds)
        if forked is not None:
            _children[forked.pid] = forked
            return forked.pid
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
            preexec_fn=preexec_fn,
        )
    _children[proc.pid] = proc
    return proc.pid


def run(command: Sequence[str], out: BinaryIO) -> int:
    """Run `command` to its end, output to `out`; its return code. A served module (warm.py) is forked
    by the warm process when there is one, tied to this process (it ends if this one does)."""
    from ftctl.backends.local import warm

    with open(os.devnull, "rb") as devnull:
        stdio = [devnull.fileno(), out.fileno(), out.fileno()]
        forked = warm.launch(command, stdio=stdio, tied=True)
        if forked is not None:
            return forked.wait()
        return subprocess.run(list(command), stdin=devnull, stdout=out, stderr=subprocess.STDOUT).returncode


# --- identities -------------------------------------------------------------------------------------


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def _other_threads(pid: int) -> bool:
    """Whether threads other than the main one remain (a zombie main thread, its process exiting)."""
    try:
        return len(os.listdir(f"/proc/{int(pid)}/task")) > 1
    except OSError:
        return False


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    # A process forked by the warm process pads its command line with NULs (warm.py): not arguments.
    raw = raw.rstrip(b"\0")
    return [part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")] if raw else []


def identity(pid: int | None) -> Identity | None:
    """The identity of the live process `pid` now (None if there is none, or it is a zombie)."""
    if not pid or int(pid) <= 0:
        return None
    fields = _stat(pid)
    if not fields or fields[0] in ("Z", "X"):
        return None
    cmdline = _cmdline(pid)
    if not cmdline:  # kernel threads, and processes being torn down, have none
        return None
    return {"pid": int(pid), "start": int(fields[19]), "boot": _boot_id(), "cmdline": cmdline,
            "pgid": int(fields[2])}  # fmt: skip


def started_identity(pid: int, proc: Child | None = None, timeout_s: float = 5.0) -> Identity | None:
    """The identity of a process just spawned (None if it has already exited).

    Popen returns once the child's exec has begun, but for a moment after that the kernel still shows
    an empty command line (the new program's arguments are not in place yet): wait that moment out."""
    proc = proc or _children.get(pid)
    deadline = time.monotonic() + timeout_s
    while True:
        found = identity(pid)
        if found is not None or (proc is not None and proc.poll() is not None):
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.002)


def is_identity(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("pid"), int)
        and isinstance(value.get("start"), int)
        and isinstance(value.get("cmdline"), list)
    )


def legacy_identity(pid: Any, *markers: str) -> Identity | None:
    """For a record written before identities were recorded (a bare pid): the process `pid` now, but
    only if its command line holds every one of `markers` (the module it runs and the folder it works
    on). Anything else is taken for an unrelated process that reused the pid."""
    if not isinstance(pid, int):
        return None
    current = identity(pid)
    if current is None:
        return None
    text = "\0".join(current["cmdline"])
    return current if all(marker in text for marker in markers) else None


def same_process(recorded: Identity | None) -> bool:
    """Whether the recorded process still runs: same pid, start time, boot and command line.

    A process that is exiting is not ended before its files are closed (a server's listening socket):
    its command line reads empty once its memory is released, and its main thread shows as a zombie
    while its other threads still exit. With the same start time it is still the recorded process."""
    if not is_identity(recorded):
        return False
    assert recorded is not None
    pid = int(recorded["pid"])
    fields = _stat(pid)
    if not fields or int(fields[19]) != recorded["start"]:
        return False
    if fields[0] in ("Z", "X") and not _other_threads(pid):
        return False
    boot = _boot_id()
    if recorded.get("boot") and boot and recorded["boot"] != boot:
        return False
    cmdline = _cmdline(pid)
    if cmdline is None:  # gone since
        return False
    return not cmdline or cmdline == recorded["cmdline"]


def alive(recorded: Identity | None) -> bool:
    """Whether the recorded process is still running (a reused pid is an ended process)."""
    if not is_identity(recorded):
        return False
    assert recorded is not None
    proc = _children.get(recorded["pid"])
    if proc is not None and proc.poll() is not None:
        return False
    return same_process(recorded)


def describe(recorded: Identity | None) -> str:
    return f"pid {recorded.get('pid')}" if isinstance(recorded, dict) else "no process"


def handle(pid: int) -> Child | None:
    """The Popen of a child this process started (None for processes started by another ftctl)."""
    return _children.get(pid)


# --- signalling ---------------------------------------------------------------------------------------


def send(recorded: Identity | None, sig: int, *, group: bool = True) -> bool:
    """Send `sig` to the recorded process (and its process group, when it still leads the one recorded),
    only after checking that the pid is still that process. False if it is not (nothing is sent).

    The pid is pinned with a pidfd before the check, so it cannot be reused between the check and the
    signal sent to the process itself."""
    if not is_identity(recorded):
        return False
    assert recorded is not None
    pid = int(recorded["pid"])
    pidfd: int | None = None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (OSError, AttributeError):  # an old kernel: check, then kill (a tiny window remains)
        pidfd = None
    try:
        if not alive(recorded):
            return False
        pgid = recorded.get("pgid")
        if group and isinstance(pgid, int) and pgid > 1 and pgid != os.getpgrp() and _pgid(pid) == pgid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            return True
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _pgid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[2]) if fields else None


def stop(recorded: Identity | None, timeout_s: float = 10.0) -> bool:
    """SIGTERM the recorded process (and its group), SIGKILL after `timeout_s`. True if it was running.

    A pid that no longer carries the recorded identity is not signalled at all."""
    if not alive(recorded):
        return False
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        if not send(recorded, sig):
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(recorded):
            time.sleep(0.05)
        if not alive(recorded):
            break
    return True


def wait_ended(recorded: Identity | None, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the recorded process to end; True if it has."""
    deadline = time.monotonic() + timeout_s
    while alive(recorded):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def signal_name(returncode: int) -> str | None:
    """'SIGKILL' for a Popen return code of -9 (None when the process exited on its own)."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
