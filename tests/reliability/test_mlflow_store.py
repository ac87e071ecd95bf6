"""MLflow's SQLite store (issue 16): what goes wrong with `mlflow.db` is one line of ftctl's own with the
exit code of the contract, found in seconds, and `status` tells the truth about the registry. Every path
handed to MLflow is escaped, and nothing MLflow records points outside the workspace. Each case failed on
the code before its fix (a path too long for SQLite: 110 s of MLflow retries, then "unexpected
OperationalError" over three lines; a damaged store: register still `succeeded` in status and SQLAlchemy's
dump on register; a locked store: the same dump; `%20` in the workspace's path: the trained model's
files "downloaded" from a path with a space; the Default experiment's artifacts at `<cwd>/mlruns/0`).

ftctl runs as a child process with a time limit: a regression shows as a timeout, not a hung suite.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import Ftctl

from .test_workspace_bounds import ftctl


def one_line_error(done: subprocess.CompletedProcess[str], code: int, said: str) -> None:
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr, done.stderr
    assert "sqlalche.me" not in done.stderr and "[SQL:" not in done.stderr, done.stderr


def test_a_workspace_path_too_long_for_sqlite_is_refused_at_once(tmp_path: Path) -> None:
    deep = tmp_path
    while len(os.fsencode(deep / ".ftctl" / "mlflow.db")) <= 520:
        deep = deep / ("d" * 100)
    deep.mkdir(parents=True)
    started = time.monotonic()
    done = ftctl(deep, "auth", timeout=100)  # MLflow itself retried for 110 s
    one_line_error(done, 2, "too long for MLflow's SQLite store")
    assert time.monotonic() - started < 30


def test_mlflow_records_no_artifact_location_outside_the_workspace(tmp_path: Path) -> None:
    """MLflow's Default experiment is `<cwd>/mlruns/0` unless told otherwise: run from another folder
    with -w, nothing appears in the current folder and every location MLflow records is the workspace's."""
    cwd, ws = tmp_path / "elsewhere", tmp_path / "ws"
    cwd.mkdir()
    done = ftctl(cwd, "-w", str(ws), "auth", timeout=120)
    assert done.returncode == 0, done.stderr
    assert list(cwd.iterdir()) == []
    with contextlib.closing(sqlite3.connect(ws / "mlflow.db")) as db:
        locations = [row[0] for row in db.execute("select artifact_location from experiments")]
    assert locations and all(loc.startswith(ws.resolve().as_uri() + "/") for loc in locations), locations


def test_a_locked_store_is_one_line_and_status_does_not_wait(tmp_path: Path) -> None:
    store = tmp_path / ".ftctl" / "mlflow.db"
    store.parent.mkdir()
    holder = sqlite3.connect(store, isolation_level=None)
    try:
        holder.execute("create table t (x)")
        holder.execute("begin exclusive")  # as a writer mid-transaction holds it
        one_line_error(ftctl(tmp_path, "auth"), 1, "is locked by another process")
        started = time.monotonic()
        assert ftctl(tmp_path, "status").returncode == 0
        assert time.monotonic() - started < 10
    finally:
        holder.close()


def test_a_model_folder_under_a_percent_encoded_path_is_saved_whole(tmp_path: Path) -> None:
    """`%20` in the workspace's path: MLflow read the model folder's plain path as a URI, decoded it to a
    space and found no files (the trainer's "The following failures occurred while downloading")."""
    from ftctl.backends.local.mlflow_model import save_mlflow_model

    hf_dir = tmp_path / "a%20b" / "hf_model"
    hf_dir.mkdir(parents=True)
    (hf_dir / "config.json").write_text("{}")
    out = save_mlflow_model(hf_dir, tmp_path / "a%20b" / "mlflow_model")
    assert (out / "artifacts" / "hf_model" / "config.json").read_text() == "{}"
    assert not (tmp_path / "a b").exists()


@pytest.mark.integration
def test_a_damaged_store_is_one_line_and_status_says_the_registry_is_unreadable(
    trained_ws: Ftctl, tmp_path: Path
) -> None:
    ws = trained_ws.copy(tmp_path / "ws")
    db = ws.workspace / "mlflow.db"
    db.write_bytes(b"not a database, whatever it was\n" * 128)
    started = time.monotonic()
    stages = ws.status()
    assert time.monotonic() - started < 10
    register = stages["register"]
    assert register["stale"] and "registry is unreadable" in register["stale_reason"], register
    assert stages["deploy"]["status"] == "pending"
    db.rename(db.with_suffix(".aside"))  # gone altogether: status says so too
    assert "the model registry mlflow.db is missing" in ws.status()["register"]["stale_reason"]
    db.with_suffix(".aside").rename(db)
    for argv in (["metrics"], ["register", "--force"], ["run", "--to", "register"]):
        one_line_error(ws.process(*argv, code=None), 2, "is damaged (file is not a database)")
    assert ws.status()["register"]["status"] == "failed"


def test_metrics_read_the_store_under_a_percent_encoded_path(tmp_path: Path) -> None:
    """`ftctl metrics` reads mlflow.db with SQLite directly; under `a%20b` it opened `a b/mlflow.db`
    (nothing there) and fell back to importing MLflow, seconds instead of milliseconds."""
    from ftctl.metrics import read_store

    db = tmp_path / "a%20b" / "mlflow.db"
    db.parent.mkdir()
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.executescript(
            "create table experiments (experiment_id, name);"
            "create table runs (run_uuid, name, status, experiment_id);"
            "create table params (key, value, run_uuid);"
            "create table latest_metrics (key, value, is_nan, run_uuid);"
            "create table metrics (key, value, step, is_nan, run_uuid, timestamp);"
            "insert into experiments values (1, 'e');"
            "insert into runs values ('r1', 'job', 'FINISHED', 1);"
            "insert into metrics values ('loss', 2.5, 1, 0, 'r1', 0);"
        )
    found = read_store(db, "r1")
    assert found is not None and found.run_name == "job" and found.steps[0]["step"] == 1


def _dies_in_mlflow_migrations(cwd: Path, then: str) -> subprocess.CompletedProcess[str]:
    """Python code `then` run in a process that dies (as on SIGKILL: no cleanup) in the middle of MLflow's
    migrations of a new store: at its first statement on an `_alembic_tmp_` table, the state a kill of
    `ftctl auth` 2.3-2.7 s in had left."""
    code = (
        "import os, sys\n"
        "from sqlalchemy import event\n"
        "from sqlalchemy.engine import Engine\n"
        "def die(conn, cursor, statement, *args):\n"
        "    if '_alembic_tmp_' in statement:\n"
        "        os._exit(9)\n"
        "event.listen(Engine, 'before_cursor_execute', die)\n"
    ) + then
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTCTL_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def test_auth_killed_while_mlflow_builds_its_store_is_recovered_by_the_next_run(tmp_path: Path) -> None:
    """Before the fix the store was built in place: a kill left it half-made and every later command
    failed ("table _alembic_tmp_experiments already exists", exit 1), `reset --all` included."""
    auth = "from ftctl.cli.app import main\nsys.argv = ['ftctl', 'auth']\nmain()\n"
    assert _dies_in_mlflow_migrations(tmp_path, auth).returncode == 9
    done = ftctl(tmp_path, "auth", timeout=120)
    assert done.returncode == 0, done.stderr
    workspace = tmp_path / ".ftctl"
    with contextlib.closing(sqlite3.connect(workspace / "mlflow.db")) as db:
        assert db.execute("select version_num from alembic_version").fetchone()
        assert db.execute("select name from experiments").fetchall() == [("Default",)]
    assert not [p.name for p in workspace.iterdir() if p.name.startswith(".mlflow.db")]


def test_a_store_an_older_ftctl_left_half_made_is_one_line_with_what_to_do(tmp_path: Path) -> None:
    """A store whose tables MLflow created but never finished migrating (killed mid-way by an ftctl
    from before the fix, or during an MLflow upgrade) is named as such, with the way out."""
    workspace = tmp_path / ".ftctl"
    workspace.mkdir()
    in_place = (
        "from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore\n"
        f"SqlAlchemyStore('sqlite:///{workspace / 'mlflow.db'}', '{workspace.as_uri()}')\n"
    )
    assert _dies_in_mlflow_migrations(tmp_path, in_place).returncode == 9
    done = ftctl(tmp_path, "auth", timeout=120)
    one_line_error(done, 2, "half-made")
    assert "mv " in done.stderr and "mlflow.db" in done.stderr
