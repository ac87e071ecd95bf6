"""The local backend's handle: the workspace folders and its MLflow tracking + registry stores.

A workspace path may hold any character (spaces, `?`, `#`, `%`, non-ASCII): every URI built from it is
escaped, so MLflow and SQLAlchemy create nothing outside it.

MLflow's SQLite store (mlflow.db) is checked with the standard library before MLflow touches it: a path
too long for SQLite, a file that is not a database, or a store another process has locked is one line of
ftctl's own (MLflow would retry for minutes, then print SQLAlchemy's dump), and an error MLflow raises
from the store later is told the same way (`store_error`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from functools import cached_property
from pathlib import Path
from types import ModuleType
from urllib.parse import quote, unquote, urlparse

from ftctl.errors import FtctlError, StageFailed, StateError, UsageError
from ftctl.state import atomic_write_text, make_dirs, pid_alive

# SQLite (its unix file layer) opens paths of at most 512 bytes, its `-journal` file's included: the
# store's own path may have at most 504. Past that MLflow retries for about 110 s, then fails.
SQLITE_MAX_PATH_BYTES = 512 - len("-journal")
STORE_TIMEOUT_S = 5.0  # how long a command waits for another process's lock on mlflow.db
REGISTRY_PROBE_S = 0.5  # how long `status` waits for it
RETRAIN = "ftctl run --from submit --to register --force"  # a new store's runs and registry, from scratch


STORE_BUILD_PREFIX = ".mlflow.db."  # + <pid>.tmp: a new store while MLflow builds its tables


def sqlite_uri(db: Path) -> str:
    """The SQLite store's URI. SQLAlchemy ends the path at a `?` and decodes `%XX` in it, so a path
    holding either is percent-encoded; it is then spelled `sqlite+pysqlite:///`, because MLflow creates
    the parent folder of whatever follows a literal `sqlite:///` without decoding it (a stray, encoded
    copy of the path). Other paths keep the plain form ftctl always recorded."""
    path = str(db)
    if "?" not in path and "%" not in path:
        return f"sqlite:///{path}"
    return "sqlite+pysqlite:///" + quote(path, safe="/")


class LocalWorkspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        return sqlite_uri(self.mlflow_db)

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

    def check_store(self, *, create: bool = True, timeout_s: float = STORE_TIMEOUT_S) -> bool:
        """Raise, as one line, what MLflow would stumble on in mlflow.db: a path too long for SQLite
        (UsageError), a link or non-file in its place or a damaged file (StateError), a lock another
        process holds past `timeout_s` (StageFailed). `create`: a missing store is created (as MLflow
        would); otherwise a missing store passes. Returns whether the store is new (holds no table)."""
        db = self.mlflow_db
        size = len(os.fsencode(db))
        if size > SQLITE_MAX_PATH_BYTES:
            raise UsageError(
                f"the workspace's path is too long for MLflow's SQLite store: {db} has {size} bytes, "
                f"SQLite opens at most {SQLITE_MAX_PATH_BYTES}",
                hint="use a workspace with a shorter path (--workspace, or FTCTL_WORKSPACE)",
            )
        if db.is_symlink() or (db.exists() and not db.is_file()):
            raise StateError(
                f"{db} is {'a symbolic link' if db.is_symlink() else 'not a regular file'}; MLflow's store "
                "must be a file in the workspace itself",
                hint=f"move it away (mv {db} {db}.moved) and run `{RETRAIN}`",
            )
        if not create and not db.exists():
            return False
        uri = "file:" + quote(str(db), safe="/") + ("?mode=rwc" if create else "?mode=ro")
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=timeout_s)) as con:
                tables = con.execute("select count(*) from sqlite_master").fetchone()[0]
        except sqlite3.Error as exc:
            raise self.store_error(exc) or StageFailed(f"MLflow's store {db}: {exc}") from None
        return not tables

    def store_error(self, exc: BaseException) -> FtctlError | None:
        """`exc` (from MLflow, SQLAlchemy or sqlite3) as one line of ftctl's, when an SQLite error of
        the store caused it; else None."""
        found = _sqlite_cause(exc)
        if found is None:
            return None
        db, said = self.mlflow_db, (str(found).splitlines() or ["unknown error"])[0]
        lowered = said.lower()
        if "locked" in lowered or "busy" in lowered:
            return StageFailed(
                f"MLflow's store {db} is locked by another process ({said})",
                hint="wait until that process (another ftctl, an `mlflow ui`) is done, then run the "
                "command again",
            )
        if "not a database" in lowered or "malformed" in lowered:
            return StateError(
                f"MLflow's store {db} is damaged ({said}): its runs and registered models cannot be read",
                hint=f"restore it from a backup, or move it aside (mv {db} {db}.corrupt) and run "
                f"`{RETRAIN}` to train and register again",
            )
        if ("table " in lowered and "already exists" in lowered) or "duplicate column name" in lowered:
            return StateError(
                f"MLflow's store {db} is half-made ({said}): a command was stopped while MLflow created or "
                "upgraded its tables",
                hint=f"move it aside (mv {db} {db}.half-made), then `ftctl auth`; if it held runs and models "
                f"you need, `{RETRAIN}` trains and registers again",
            )
        if "unable to open" in lowered:
            return UsageError(
                f"cannot open MLflow's store {db} ({said})",
                hint="check that the workspace folder exists and is writable",
            )
        return StageFailed(f"MLflow's store {db}: {said}")

    def registry_problem(self, name: str, version: str) -> str | None:
        """Why the registry does not hold version `version` of model `name` (None when it does, or
        while another process's lock keeps it from being read): for `ftctl status`, so within a second
        and without MLflow."""
        db = self.mlflow_db
        if not db.exists() and not db.is_symlink():
            return f"the model registry {db.name} is missing"
        try:
            self.check_store(create=False, timeout_s=REGISTRY_PROBE_S)
            uri = "file:" + quote(str(db), safe="/") + "?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=REGISTRY_PROBE_S)) as con:
                held = con.execute(
                    "select 1 from model_versions where name = ? and version = ?", (name, version)
                ).fetchone()
        except (FtctlError, sqlite3.Error) as exc:
            known = exc if isinstance(exc, FtctlError) else self.store_error(exc)
            if known is not None and " is locked " in known.message:
                return None  # another process writes to it: it cannot be told now
            if "no such table" in str(exc):
                return f"{db.name} holds no model registry"
            return f"the model registry is unreadable: {known.message if known else exc}"
        return None if held else f"version {version} of {name} is not in the model registry"

    def registered_folder(self, name: str, version: str) -> Path | None:
        """The local folder MLflow's registry holds version `version` of model `name` in, read from the
        store with sqlite3 (deploy needs no MLflow for it); None when the registry cannot say so here
        (no such READY version, a location that is no local folder, an unreadable store): ask MLflow."""
        db = self.mlflow_db
        if not db.is_file() or db.is_symlink():
            return None
        uri = "file:" + quote(str(db), safe="/") + "?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=REGISTRY_PROBE_S)) as con:
                row = con.execute(
                    "select storage_location, source from model_versions "
                    "where name = ? and version = ? and status = 'READY'",
                    (name, version),
                ).fetchone()
        except sqlite3.Error:
            return None
        location = next((value for value in row or () if value), None)
        parsed = urlparse(location or "")
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            return None
        folder = Path(unquote(parsed.path))
        return folder if folder.is_dir() else None

    @cached_property
    def mlflow(self) -> ModuleType:
        """mlflow, pointed at this workspace's SQLite tracking and registry store (checked first)."""
        new = self.check_store()
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow

        for name in ("mlflow", "alembic"):  # after the import: mlflow sets its loggers up on import
            logging.getLogger(name).setLevel(logging.WARNING)

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        if new:
            self._build_store()
        return mlflow

    def _build_store(self) -> None:
        """Build MLflow's tables in a file of its own and only then move it into place: killed half-way,
        MLflow's migrations leave a store no later command can open ("duplicate column name: step").
        Built here, so that its Default experiment keeps its artifacts in the workspace too (MLflow's own
        default for them: <current folder>/mlruns)."""
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for stale in self.root.glob(f"{STORE_BUILD_PREFIX}*.tmp*"):  # of a builder that died
            pid = stale.name[len(STORE_BUILD_PREFIX) :].split(".", 1)[0]
            if not (pid.isdigit() and pid_alive(int(pid))):
                stale.unlink(missing_ok=True)
        building = self.root / f"{STORE_BUILD_PREFIX}{os.getpid()}.tmp"
        building.unlink(missing_ok=True)
        try:
            SqlAlchemyStore(sqlite_uri(building), self.artifacts_dir.as_uri()).engine.dispose()
            os.replace(building, self.mlflow_db)
        finally:
            for path in (building, building.with_name(building.name + "-journal")):
                path.unlink(missing_ok=True)

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


def _sqlite_cause(exc: BaseException) -> sqlite3.Error | None:
    """The sqlite3 error behind `exc` (itself, its cause or context, SQLAlchemy's `orig`), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, sqlite3.Error):
            return current
        orig = getattr(current, "orig", None)
        todo += [current.__cause__, current.__context__, orig if isinstance(orig, BaseException) else None]
    return None


def real_dir(path: Path) -> Path:
    """`path`, which must be a folder and not a symbolic link (StateError naming it otherwise)."""
    if path.is_symlink() or not path.is_dir():
        raise StateError(
            f"{path} is {'a symbolic link' if path.is_symlink() else 'not a folder'}; ftctl keeps its "
            "files in real folders inside the workspace",
            hint=f"remove {path} and run the command again",
        )
    return path
