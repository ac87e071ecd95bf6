"""A deploy killed before its server is recorded leaves no key behind (the key is written only once
the server is recorded in <workspace>/live and in the state file), and its unrecorded server exits.

deploy.run runs for real up to the kill point, with the model lookup stubbed out; a kill is stood for
by an exception that nothing in deploy catches.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from ftctl.backends.local import procs
from ftctl.stages.contract import StageCall


def make_ctx(workspace: Path) -> Any:
    from ftctl.config import load_config
    from ftctl.context import Context
    from ftctl.ui import UI

    workspace.mkdir(parents=True, exist_ok=True)
    return Context(
        workspace=workspace, config=load_config(environ={}, backend="local"), ui=UI(err=io.StringIO())
    )


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    (workspace / "secrets").mkdir(parents=True)
    return workspace


def deploy_call(ws: Path, checkpoint: Any = lambda outputs: None) -> StageCall:
    def done(outputs: dict[str, Any]) -> dict[str, Any]:
        return {"status": "succeeded", "outputs": outputs}

    register = done({"model_name": "m", "version": "1", "model_uri": "models:/m/1"})
    compute = done({"device": "cpu", "size": "cpu"})
    state = {"stages": {"register": register, "check-compute": compute, "pick-model": done({})}}
    return StageCall("deploy", state, checkpoint=checkpoint)


class Killed(BaseException):
    """Stands for a SIGKILL: nothing after it runs (except `finally` blocks, which a kill skips too here
    because none of them writes a key)."""


def test_a_deploy_killed_before_its_server_starts_leaves_no_key(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftctl.backends.local.stages import deploy

    ctx = make_ctx(ws)
    monkeypatch.setattr(deploy, "registered_model_dir", lambda *a: ws / "model")

    def killed(*args: Any, **kwargs: Any) -> int:
        raise Killed

    monkeypatch.setattr(procs, "spawn", killed)
    with pytest.raises(Killed):
        deploy.run(ctx, deploy_call(ws))
    assert list((ws / "secrets").iterdir()) == [], "a key was left for a server that never started"


def test_a_deploy_killed_before_its_state_save_leaves_no_key_and_no_server(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after spawning the server, at the state save: the server exits unrecorded, no key is
    written, and its live record reads ended (the next deploy drops it)."""
    from ftctl.backends.local.stages import deploy

    ctx = make_ctx(ws)
    monkeypatch.setattr(deploy, "registered_model_dir", lambda *a: ws / "model")
    stale = ws / "secrets" / "from-an-older-kill.key"
    stale.write_text("x")

    def killed(outputs: dict[str, Any]) -> None:
        raise Killed

    with pytest.raises(Killed):
        deploy.run(ctx, deploy_call(ws, checkpoint=killed))
    assert list((ws / "secrets").iterdir()) == [], "a key without a recorded server"
    from ftctl.backends.local import live

    [record] = live.live_resources(ws, include_ended=True)
    server = record.processes["server"]
    assert procs.wait_ended(server, 30), "the unrecorded server did not exit"
    assert [r.name for r in live.forget_ended(ws)] == [record.name]
