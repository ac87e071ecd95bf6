"""What ftctl says of an endpoint is true, and nothing of one is left behind (issue 16). Each case failed
on the code before its fix: a deleted key file left `status` saying the endpoint was up and well, and
`credentials --rotate`, the way out that `score` pointed to, failed on the missing key; a workspace moved
by a user (its state recorded by an ftctl that did not yet record the workspace's identity) kept the
endpoint's key after teardown; `deploy --ttl` that ran out while the model loaded said "the scoring server
exited with code 0 before it was ready", with the server's log.

Each test deploys its own copy of the session's trained workspace (the shared deployed one is only read).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness import Ftctl

from .conftest import SERVER_MODULE, live_pids

pytestmark = pytest.mark.integration


def nothing_left(ws: Ftctl) -> None:
    """No server of this workspace runs, and it keeps no key and no live record."""
    assert live_pids(SERVER_MODULE, str(ws.root)) == []
    assert sorted((ws.workspace / "secrets").glob("*")) == []
    assert sorted((ws.workspace / "live").glob("*.json")) == []


def test_a_deleted_key_is_told_and_rotated_and_a_moved_workspace_tears_down_all(
    trained_ws: Ftctl, tmp_path: Path
) -> None:
    ws = trained_ws.copy(tmp_path / "ws")
    ws("deploy")
    key_file = Path(ws.outputs("deploy")["key_file"])
    key_file.unlink()
    deploy = ws.status()["deploy"]
    assert deploy["stale"] and f"its key file {key_file.name} is gone" in deploy["stale_reason"], deploy
    assert "credentials --rotate" in deploy["stale_reason"]
    score = ws("score", code=1)
    assert "is gone" in score.stderr and "`ftctl credentials --rotate`" in score.stderr
    ws("credentials", "--rotate")
    assert key_file.is_file() and not ws.status()["deploy"]["stale"]
    ws("credentials")  # the endpoint answers to the new key

    # Moved as a user moves it, with a state from before the workspace's identity was recorded: the
    # records still name the old path; teardown stops the server and removes the key all the same.
    state = ws.state()
    state.pop("workspace", None)
    (ws.workspace / "state.json").write_text(json.dumps(state))
    moved = Ftctl(tmp_path / "moved", options=ws.options, settings=ws.settings, environ=ws.environ)
    moved.config = moved.root / ws.config.name if ws.config is not None else None
    ws.root.rename(moved.root)
    moved("teardown")
    nothing_left(moved)
    assert not ws.root.exists()


def test_a_ttl_that_runs_out_while_the_model_loads_says_so_and_leaves_nothing(
    trained_ws: Ftctl, tmp_path: Path
) -> None:
    ws = trained_ws.copy(tmp_path / "ws")
    # The server starts cold, importing torch (seconds): forked from a loaded warm process it would be
    # ready within the second, and there would be no load for the time to live to run out in.
    ws.environ["FTCTL_WARM"] = "off"
    started = time.monotonic()
    done = ws("deploy", "--ttl", "1s", code=1)
    assert "reached its time to live (deploy.ttl 1s) before it had loaded the model" in done.stderr
    assert "--ttl" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 120
    nothing_left(ws)
    assert ws.status()["deploy"]["status"] == "failed"
    ws("teardown")  # nothing to tear down, exit 0
