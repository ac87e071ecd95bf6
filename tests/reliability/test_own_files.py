"""Workspace files are never opened through a symbolic link, and a workspace path may hold any character.

A link planted where ftctl keeps its state, lock, backup, temp or key files is refused with a StateError
naming it (or simply not followed); nothing outside the workspace is read or written through it. A
workspace named with spaces, `?`, `#`, `%` and non-ASCII characters gets its MLflow store and artifacts
inside it, not in a truncated or percent-encoded copy of its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.errors import StateError
from ftctl.state import StateStore, WorkspaceLock

GOOD = {"schema_version": 1, "backend": "local", "run_id": "r", "stages": {}}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside"
    target.mkdir()
    (target / "precious.json").write_text(json.dumps({**GOOD, "run_id": "not yours"}))
    return target


def ws_at(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


def test_a_state_file_that_is_a_link_is_refused(tmp_path: Path, outside: Path) -> None:
    ws = ws_at(tmp_path)
    (ws / "state.json").symlink_to(outside / "precious.json")
    store = StateStore(ws)
    for action in (store.load, lambda: store.save(GOOD)):
        with pytest.raises(StateError, match=rf"{ws / 'state.json'} is a symbolic link"):
            action()
    assert json.loads((outside / "precious.json").read_text())["run_id"] == "not yours"


def test_a_backup_that_is_a_link_is_neither_restored_nor_written(tmp_path: Path, outside: Path) -> None:
    ws = ws_at(tmp_path)
    store = StateStore(ws)
    store.save(GOOD)
    (ws / "state.json.bak").symlink_to(outside / "precious.json")
    with pytest.raises(StateError, match="symbolic link"):
        store.restore_backup()
    assert json.loads((ws / "state.json").read_text())["run_id"] == "r"
    with pytest.raises(StateError, match="symbolic link"):
        store.save({**GOOD, "run_id": "next"})
    assert json.loads((outside / "precious.json").read_text())["run_id"] == "not yours"


def test_temp_files_are_fresh_names_never_followed(tmp_path: Path, outside: Path) -> None:
    """A link planted at the temp name a writer would use (its pid is easy to guess) is not written
    through."""
    ws = ws_at(tmp_path)
    for name in ("state.json", "state.json.bak"):
        (ws / f".{name}.{os.getpid()}.tmp").symlink_to(outside / "precious.json")
    store = StateStore(ws)
    store.save(GOOD)
    store.save({**GOOD, "run_id": "second"})
    assert json.loads((outside / "precious.json").read_text())["run_id"] == "not yours"
    assert json.loads(store.path.read_text())["run_id"] == "second"
    leftovers = sorted(p.name for p in ws.iterdir() if p.name.endswith(".tmp") and not p.is_symlink())
    assert leftovers == []


def test_a_lock_file_that_is_a_link_is_refused(tmp_path: Path, outside: Path) -> None:
    ws = ws_at(tmp_path)
    (ws / "lock").symlink_to(outside / "lockfile")
    with pytest.raises(StateError, match=rf"{ws / 'lock'} is a symbolic link"):
        WorkspaceLock(ws, "ftctl test", 1).acquire()
    assert not (outside / "lockfile").exists()


def test_a_lock_held_by_a_process_that_named_no_owner_is_described_in_words(tmp_path: Path) -> None:
    """A holder that has not written who it is (an ftctl in the instant after it took the lock, or
    another program): the wait and the timeout said "held by pid None on None, `None`, started None"."""
    import fcntl

    from ftctl.errors import LockTimeout

    ws = ws_at(tmp_path)
    fd = os.open(ws / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    said: list[str] = []
    try:
        with pytest.raises(LockTimeout) as raised:
            WorkspaceLock(ws, "ftctl test", 0.3, notify=said.append).acquire()
    finally:
        os.close(fd)
    for text in [*said, raised.value.message]:
        assert "None" not in text and "a process that has not said which it is" in text, text


def test_keys_are_never_written_through_links(tmp_path: Path, outside: Path) -> None:
    from ftctl.backends.local.workspace import LocalWorkspace

    ws = LocalWorkspace(ws_at(tmp_path))
    ws.secrets_dir.symlink_to(outside, target_is_directory=True)
    with pytest.raises(StateError, match="secrets is a symbolic link"):
        ws.write_secret("ep.key", "secret")
    with pytest.raises(StateError):
        ws.create()
    assert sorted(p.name for p in outside.iterdir()) == ["precious.json"]
    assert oct(outside.stat().st_mode & 0o777) != "0o700"  # create() did not chmod through the link

    ws.secrets_dir.unlink()
    ws.secrets_dir.mkdir(mode=0o700)
    (ws.secrets_dir / "ep.key").symlink_to(outside / "precious.json")
    with pytest.raises(StateError, match="ep.key is a symbolic link"):
        ws.write_secret("ep.key", "secret")
    assert json.loads((outside / "precious.json").read_text())["run_id"] == "not yours"


def test_process_logs_are_never_written_through_links(tmp_path: Path, outside: Path) -> None:
    """An endpoint's server.log (its folder outlives a `deploy --force`) and the warm process's
    warm.log: before the fix, a link in their place had the server or the warm process append to the
    file it pointed to."""
    from ftctl.backends.local import procs, warm

    ws = ws_at(tmp_path)
    (ws / "server.log").symlink_to(outside / "precious.json")
    (ws / "warm.log").symlink_to(outside / "precious.json")
    with pytest.raises(StateError, match="server.log is a symbolic link"):
        procs.spawn([sys.executable, "-c", "print('written')"], ws / "server.log")
    with pytest.raises(StateError, match="warm.log is a symbolic link"):
        warm.start(log=ws / "warm.log", preload=False)
    assert json.loads((outside / "precious.json").read_text())["run_id"] == "not yours"


# --- any character in the workspace path -------------------------------------------------------------

MLFLOW_FLOW = r"""
import sys
from pathlib import Path
from typer.testing import CliRunner
from ftctl.cli.app import app
from ftctl.backends.local.workspace import LocalWorkspace

for name in sys.argv[1:]:
    root = Path(name) / ".ftctl"
    result = CliRunner().invoke(app, ["--workspace", str(root), "auth"])
    assert result.exit_code == 0, result.output
    ws = LocalWorkspace(root)
    experiment = ws.ensure_experiment("chat completion?#%ü")
    mlflow = ws.mlflow
    model = Path("model-src")
    model.mkdir(exist_ok=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("loss", 1.0)
        mlflow.log_artifacts(str(model), artifact_path="mlflow_model")
    mlflow.register_model(f"runs:/{run.info.run_id}/mlflow_model", "tiny?#%")
    assert ws.mlflow_db.is_file(), ws.tracking_uri
    print(ws.tracking_uri)
"""


@pytest.mark.integration  # two real MLflow registries in a process
def test_a_workspace_path_may_hold_any_character(tmp_path: Path) -> None:
    """auth, an experiment, a run with an artifact, a registered version: every file lands inside."""
    names = ["w s?#%ü", "w s#ü"]  # the second needs no escaping (its URI stays sqlite:///...)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTCTL_", "MLFLOW_"))}
    done = subprocess.run([sys.executable, "-c", MLFLOW_FLOW, *names], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    inside = [tmp_path / name for name in names] + [tmp_path / "model-src"]
    strays = [
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if not any(p == root or root in p.parents for root in inside)
    ]
    assert strays == [], f"created outside the workspaces: {strays}"
    for name in names:
        ws = tmp_path / name / ".ftctl"
        assert (ws / "mlflow.db").is_file()
        artifacts = [p for p in (ws / "mlartifacts").rglob("MLmodel")]
        assert artifacts, sorted(str(p) for p in ws.rglob("*"))
