"""The local backend's handle: the workspace folders and its MLflow tracking + registry stores.

A workspace path may hold any character (spaces, `?`, `#`, `%`, non-ASCII): every URI built from it is
escaped, so MLflow and SQLAlchemy create nothing outside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from functools import cached_property
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

from ftctl.errors import StateError
from ftctl.state import atomic_write_text, make_dirs


class LocalWorkspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        """The SQLite store's URI. SQLAlchemy ends the path at a `?` and decodes `%XX` in it, so a path
        holding either is percent-encoded; it is then spelled `sqlite+pysqlite:///`, because MLflow
        creates the parent folder of whatever follows a literal `sqlite:///` without decoding it (a
        stray, encoded copy of the path). Other paths keep the plain form ftctl always recorded."""
        path = str(self.mlflow_db)
        if "?" not in path and "%" not in path:
            return f"sqlite:///{path}"
        return "sqlite+pysqlite:///" + quote(path, safe="/")

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def endpoints_dir(self) -> Path:
        return self.root / "endpoints"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def live_dir(self) -> Path:
        return self.root / "live"

    def create(self) -> None:
        for path in (self.root, self.artifacts_dir, self.jobs_dir, self.endpoints_dir):
            make_dirs(path, self.root)
        make_dirs(self.secrets_dir, self.root, mode=0o700)
        os.chmod(real_dir(self.secrets_dir), 0o700)

    @cached_property
    def mlflow(self) -> ModuleType:
        """mlflow, pointed at this workspace's SQLite tracking and registry store."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        for name in ("mlflow", "alembic"):  # after the import: mlflow sets its loggers up on import
            logging.getLogger(name).setLevel(logging.WARNING)

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return mlflow

    def relocate(self, old: str, new: str) -> None:
        """The artifact locations MLflow stored in mlflow.db (absolute: an experiment's, a run's, a
        model version's source and storage) rewritten from `old` to `new`, with sqlite3 directly (MLflow
        itself is not imported). Values outside `old` are left alone."""
        import sqlite3

        from ftctl.relocation import rewrite

        if not self.mlflow_db.is_file() or self.mlflow_db.is_symlink():
            return
        columns = (
            ("experiments", "experiment_id", "artifact_location"),
            ("runs", "run_uuid", "artifact_uri"),
            ("model_versions", "rowid", "source"),
            ("model_versions", "rowid", "storage_location"),
            ("logged_models", "model_id", "artifact_location"),
        )
        with contextlib.closing(sqlite3.connect(self.mlflow_db, timeout=10)) as db, db:
            tables = {row[0] for row in db.execute("select name from sqlite_master where type='table'")}
            for table, key, column in columns:
                if table not in tables:
                    continue
                for row_key, value in db.execute(f"select {key}, {column} from {table}").fetchall():
                    moved = rewrite(value, old, new)
                    if moved != value:
                        db.execute(f"update {table} set {column} = ? where {key} = ?", (moved, row_key))

    def experiment_location(self, name: str) -> str:
        """Where experiment `name` keeps its artifacts: a folder of its own inside the workspace, as a
        file URI (without importing MLflow: the trainer creates the experiment there)."""
        folder = name.replace("/", "_").replace("\0", "_")
        if not folder.strip("."):  # "", "." and ".." would not be a folder of their own
            folder = f"_{folder}"
        # as_uri percent-encodes every character a URI cannot hold as such (`?`, `#`, `%`, spaces...).
        return (self.artifacts_dir / folder).as_uri()

    def ensure_experiment(self, name: str) -> str:
        """The experiment's id, creating it with its artifacts inside the workspace."""
        client = self.mlflow.MlflowClient()
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        return str(client.create_experiment(name, artifact_location=self.experiment_location(name)))

    def write_secret(self, name: str, value: str) -> Path:
        """A 0600 file under secrets/ (never in the state file); neither secrets/ nor the file may be a
        symbolic link (StateError naming it)."""
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        real_dir(self.secrets_dir)
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"not a file name: {name!r}")
        path = self.secrets_dir / name
        atomic_write_text(path, value, mode=0o600)
        os.chmod(path, 0o600)
        return path


def real_dir(path: Path) -> Path:
    """`path`, which must be a folder and not a symbolic link (StateError naming it otherwise)."""
    if path.is_symlink() or not path.is_dir():
        raise StateError(
            f"{path} is {'a symbolic link' if path.is_symlink() else 'not a folder'}; ftctl keeps its "
            "files in real folders inside the workspace",
            hint=f"remove {path} and run the command again",
        )
    return path
