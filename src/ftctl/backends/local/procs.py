"""Detached processes (training jobs, endpoint servers) that outlive the ftctl command starting them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ftctl.state import pid_alive

# Children started by this process: polled so a finished child is not mistaken for a live one (a zombie
# still answers kill(pid, 0)).
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    command: Sequence[str],
    log_path: Path,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    pass_fds: Sequence[int] = (),
) -> int:
    """Start `command` in its own session (immune to the terminal closing), output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    _children[proc.pid] = proc
    return proc.pid


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    return pid_alive(pid)


def handle(pid: int) -> subprocess.Popen[bytes] | None:
    """The Popen of a child this process started (None for processes started by another ftctl)."""
    return _children.get(pid)


def stop(pid: int, timeout_s: float = 10.0) -> bool:
    """SIGTERM the process group, SIGKILL after `timeout_s`. True if something was running."""
    if not alive(pid):
        return False
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
        if not alive(pid):
            break
    return True


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
