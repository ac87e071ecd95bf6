"""A copied or moved workspace (issue 16): a copy never acts on what the original runs, a move keeps
working and writes nothing under the old path. Both failed on the code before (the copy's teardown
stopped the original's endpoint; a moved workspace registered from, and wrote into, the old path).

The session's deployed workspace is copied as a user would (`cp -r`: nothing relocated by the tests),
and only read: its endpoint must still answer afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from harness import Ftctl

pytestmark = pytest.mark.integration


def cp_r(ws: Ftctl, dest: Path) -> Ftctl:
    """`cp -r` of the workspace's root (its config file included), and the harness for the copy."""
    shutil.copytree(ws.root, dest, symlinks=True)
    copy = Ftctl(dest, options=ws.options, settings=ws.settings, environ=ws.environ)
    copy.config = dest / ws.config.name if ws.config is not None else None
    return copy


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def test_a_copy_leaves_the_original_endpoint_alone(deployed_ws: Ftctl, tmp_path: Path) -> None:
    url = deployed_ws.outputs("deploy")["url"]
    copy = cp_r(deployed_ws, tmp_path / "copy")
    status = copy("status", "--json")
    assert "is a copy of" in status.stderr
    stages = {s["name"]: s for s in json.loads(status.stdout)["stages"]}
    assert stages["deploy"]["status"] == "pending" and stages["submit"]["status"] == "succeeded"
    copy("teardown", code=None)
    copy("reset", "--all")
    assert ready(url), "the copy's teardown or reset stopped the original's endpoint"
    creds = copy("credentials", code=None)
    assert creds.exit_code != 0 and url not in creds.stdout  # the original's address is not the copy's
    assert not list((copy.workspace / "secrets").glob("*.key"))


def test_a_moved_workspace_keeps_working_and_writes_nothing_at_the_old_path(
    deployed_ws: Ftctl, tmp_path: Path
) -> None:
    first = cp_r(deployed_ws, tmp_path / "first")
    first("status")  # adopted as a copy: its own from now on
    moved_root = tmp_path / "moved%20ws"  # `%20` too: every path handed to MLflow is escaped
    first.root.rename(moved_root)
    moved = Ftctl(moved_root, options=first.options, settings=first.settings, environ=first.environ)
    moved.config = moved_root / first.config.name if first.config is not None else None
    done = moved("run", "--to", "register", "--set", "register.model_name=moved-model")
    assert "moved from" in done.stderr
    assert "- submit: up to date" in done.stderr  # a move makes nothing stale
    assert not first.root.exists(), sorted(str(p) for p in first.root.rglob("*"))
    assert moved.outputs("register")["model_name"] == "moved-model"
    assert str(moved_root) in json.dumps(moved.outputs("submit"))


def in_folder(ws: Ftctl, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`ftctl args` as a process whose current folder is `cwd` (not the workspace's root)."""
    done = subprocess.run(ws.argv(*args), cwd=cwd, env=ws.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ftctl {' '.join(args)} exited {done.returncode}\n{done.stderr}"
    return done


def test_a_workspace_moved_with_its_endpoint_up_still_owns_it(trained_ws: Ftctl, tmp_path: Path) -> None:
    """`mv` of a project whose endpoint runs: status shows it up, `credentials --rotate` reaches it (its
    server reads the new key from the moved folder), teardown stops it and removes its key and record;
    nothing is written under the old path, and nothing in the folder ftctl was run from."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ws = trained_ws.copy(tmp_path / "first")
    in_folder(ws, cwd, "deploy")
    url = ws.outputs("deploy")["url"]
    moved = Ftctl(tmp_path / "moved", options=ws.options, settings=ws.settings, environ=ws.environ)
    moved.config = moved.root / ws.config.name if ws.config is not None else None
    ws.root.rename(moved.root)
    status = in_folder(moved, cwd, "status", "--json")
    assert "moved from" in status.stderr
    deploy = {s["name"]: s for s in json.loads(status.stdout)["stages"]}["deploy"]
    assert deploy["status"] == "succeeded" and not deploy["stale"], deploy
    assert ready(url)
    in_folder(moved, cwd, "credentials", "--rotate")
    in_folder(moved, cwd, "teardown")
    assert not ready(url)
    for folder in ("secrets", "live"):
        assert not list((moved.workspace / folder).glob("*")), folder
    assert not ws.root.exists()
    assert list(cwd.iterdir()) == []


def test_a_moved_workspace_records_its_own_mlflow_store(prepared_ws: Ftctl, tmp_path: Path) -> None:
    """auth's record of the MLflow store (an SQLAlchemy URI, not a path or a file:// URI) follows a move,
    into a path that needs the escaped form: nothing in the state names the old place."""
    from ftctl.backends.local.workspace import LocalWorkspace

    first = cp_r(prepared_ws, tmp_path / "first")
    first("status")  # adopted as a copy: its own from now on
    assert first.outputs("auth")["tracking_uri"] == f"sqlite:///{first.workspace / 'mlflow.db'}"
    moved = cp_r(first, tmp_path / "moved?%20ws")
    shutil.rmtree(first.root)
    assert "moved from" in moved("status").stderr
    auth = moved.outputs("auth")
    expected = LocalWorkspace(moved.workspace).tracking_uri
    assert expected.startswith("sqlite+pysqlite:///") and "%3F" in expected
    assert auth["tracking_uri"] == auth["registry_uri"] == expected
    assert str(first.root) not in json.dumps(moved.state())
    assert not any(s["stale"] for s in moved.json("status")["stages"])
