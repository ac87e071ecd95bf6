"""Found by running ftctl as a hostile caller would: with its standard output closed (`ftctl status
>&-`, as a cron line or a daemon may start it), status failed with "unexpected AttributeError:
'NoneType' object has no attribute 'isatty'" and exit 1. A closed standard stream is what the caller
wants to discard: ftctl now opens /dev/null in its place first, so every command runs as with `>
/dev/null`, and no file ftctl opens (the state file, a log) can land on descriptor 1 or 2, where
anything printed, by ftctl or a process it starts, would be written into it. A closed stdin stays
closed (commands that read it say so: tests/reliability/test_workspace_bounds.py); the others run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import Ftctl

CLOSE = {"stdout": "exec 1>&-", "stderr": "exec 2>&-", "both": "exec 1>&- 2>&-", "stdin": "exec 0<&-"}


@pytest.mark.parametrize("closed", sorted(CLOSE))
def test_commands_run_with_a_standard_stream_closed(ftctl: Ftctl, closed: str) -> None:
    python = f"{sys.executable} -m ftctl"
    script = f"{CLOSE[closed]}; {python} run --to auth && {python} status && {python} status --json"
    done = subprocess.run(
        ["bash", "-c", script], env=ftctl.env(), cwd=ftctl.root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "unexpected" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    state = json.loads((ftctl.workspace / "state.json").read_text(encoding="utf-8"))
    assert state["stages"]["auth"]["status"] == "succeeded"
