"""The local backend's handle: the workspace folders and its MLflow tracking + registry stores."""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path
from types import ModuleType

from ftctl.state import atomic_write_text


class LocalWorkspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow_db}"

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

    def create(self) -> None:
        for path in (self.root, self.artifacts_dir, self.jobs_dir, self.endpoints_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)

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

    def ensure_experiment(self, name: str) -> str:
        """The experiment's id, creating it with its artifacts inside the workspace."""
        client = self.mlflow.MlflowClient()
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = (self.artifacts_dir / name).as_uri()
        return str(client.create_experiment(name, artifact_location=location))

    def write_secret(self, name: str, value: str) -> Path:
        """A 0600 file under secrets/ (never in the state file)."""
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.secrets_dir / name
        atomic_write_text(path, value, mode=0o600)
        os.chmod(path, 0o600)
        return path
