"""The one CLI harness of the test suite: `ftctl` against one workspace.

`Ftctl(root)(*args)` runs ftctl in-process (Typer's CliRunner); `Ftctl(root).process(*args)` runs it as a
separate `python -m ftctl` process, and `env()` is the environment for any process (a notebook kernel, a
pseudo-terminal) that should run ftctl on this workspace. Every command gets the same options (a config
file, a backend, `--set` settings) and the same `FTCTL_*` environment, whichever way it runs.

`FAST` is the one fast training profile of every campaign (ux, quality, reliability, e2e): a workspace
trained with it by one campaign can be reused by any other (see the snapshot fixtures in conftest.py).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

# The one fast training profile: 8 optimizer steps on the shipped sample, the train loss logged (and the
# held-out loss evaluated, on 16 conversations) every 2 steps; everything else at its default. As a
# config file (`FAST`, what the snapshot workspaces get) and as FTCTL_* variables (`FAST_ENVIRON`, for a
# campaign that sets its settings through the environment): the same settings, the same fingerprints.
FAST_SETTINGS = {"finetune": {"max_steps": 8, "logging_steps": 2, "max_eval_samples": 16}}
FAST = "".join(
    f"{section}:\n" + "".join(f"  {key}: {value}\n" for key, value in values.items())
    for section, values in FAST_SETTINGS.items()
)
FAST_ENVIRON = {
    f"FTCTL_{section.upper()}__{key.upper()}": str(value)
    for section, values in FAST_SETTINGS.items()
    for key, value in values.items()
}

CONFIG_NAME = "ftctl-test.yaml"


# The address of this test run's warm process (ftctl.backends.local.warm), when conftest started one:
# the trainers, endpoints and calibrations of every ftctl process started here are forked from it.
WARM: str | None = None


def suite_environ() -> dict[str, str]:
    """What every ftctl the suite runs sees beyond this process's environment, in-process or not:
    offline, unbuffered, this Python's scripts first on PATH, and FTCTL_WARM naming the test run's warm
    process (if any)."""
    env = dict(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if WARM:
        env["FTCTL_WARM"] = WARM
    return env


# Left out of every ftctl's environment: a developer's own settings (FTCTL_*), and pytest's name of the
# test running, which changes from test to test (a library reads it when it is imported, so the warm
# process serves only an environment without it).
def _left_out(name: str) -> bool:
    return name.startswith("FTCTL_") or name == "PYTEST_CURRENT_TEST"


def clean_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for an ftctl process: this one's, less what is left out, plus suite_environ()."""
    env = {k: v for k, v in os.environ.items() if not _left_out(k)}
    env.update(suite_environ())
    env.update(extra or {})
    return env


# `python -c IMPORT_GUARD PACKAGES ARGS...`: runs `ftctl ARGS...` in this process (its exit code kept),
# then prints which of the comma-separated top-level PACKAGES it imported.
IMPORT_GUARD = """
import json, sys
from ftctl.cli.app import main
watched, sys.argv = set(sys.argv[1].split(",")), ["ftctl", *sys.argv[2:]]
code = 0
try:
    main()
except SystemExit as exit:
    code = exit.code if isinstance(exit.code, int) else 1
print("IMPORTED " + json.dumps(sorted({m.split(".")[0] for m in sys.modules} & watched)))
sys.exit(code)
"""


class Ftctl:
    """`ftctl [options] ...` against the workspace `root/.ftctl`.

    options:  arguments before every command (`--backend azureml`, `--config FILE`); with `config`
              (YAML text) the workspace gets `root/ftctl-test.yaml` and `--config` names it.
    settings: `--set KEY=VALUE` items added to every command (a list: a test may append to it).
    environ:  FTCTL_* (or other) variables every command sees, in-process and as a process.
    """

    def __init__(
        self,
        root: Path,
        *,
        config: str | None = None,
        options: Sequence[str] = (),
        settings: Sequence[str] = (),
        environ: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.workspace = root / ".ftctl"
        self.config: Path | None = None
        self.options = list(options)
        if config is not None:
            self.config = root / CONFIG_NAME
            if not self.config.exists():
                root.mkdir(parents=True, exist_ok=True)
                self.config.write_text(config)
        self.settings = list(settings)
        self.environ = dict(environ or {})
        self.runner = CliRunner()
        # Injected into the backend's handles, as an embedding caller would (the fake Azure ML service).
        self.backend_options: dict[str, Any] = {}
        self.transcripts: dict[str, str] = {}  # what commands that built it printed, by name

    # --- running ftctl -----------------------------------------------------------------------------

    def args(self, *args: str) -> list[str]:
        """The command line after `ftctl`."""
        config = ["--config", str(self.config)] if self.config is not None else []
        sets = [item for setting in self.settings for item in ("--set", setting)]
        return ["--workspace", str(self.workspace), *self.options, *config, *sets, *args]

    def __call__(self, *args: str, code: int | None = 0, input: str | None = None) -> Any:
        """`ftctl args` in-process; asserts its exit code unless `code` is None."""
        from ftctl.cli.app import app
        from ftctl.cli.common import BackendOptions

        clean: dict[str, str | None] = {name: None for name in os.environ if _left_out(name)}
        result = self.runner.invoke(
            app,
            self.args(*args),
            input=input,
            env={**clean, **suite_environ(), **self.environ},
            obj=BackendOptions(self.backend_options),
        )
        if code is not None:
            assert result.exit_code == code, (
                f"ftctl {' '.join(args)} exited {result.exit_code}, wanted {code}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n{result.exception!r}"
            )
        return result

    def piped(self, *args: str, input: str, code: int = 0) -> Any:
        """`ftctl args` with `input` on its stdin."""
        return self(*args, input=input, code=code)

    def json(self, *args: str, code: int = 0, input: str | None = None) -> Any:
        return json.loads(self("--json", *args, code=code, input=input).stdout)

    def env(self) -> dict[str, str]:
        """The environment for an `ftctl` process (or a notebook's kernel) on this workspace."""
        env = clean_environ(self.environ)
        env["FTCTL_WORKSPACE"] = str(self.workspace)
        if self.config is not None:
            env["FTCTL_CONFIG"] = str(self.config)
        return env

    def imports(
        self, *args: str, of: Sequence[str], code: int = 0
    ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
        """`ftctl args` as a process, and which of the top-level packages `of` it imported."""
        done = subprocess.run(
            [sys.executable, "-c", IMPORT_GUARD, ",".join(of), *self.args(*args)],
            capture_output=True, text=True, env=self.env(), cwd=self.root, timeout=300,
        )  # fmt: skip
        assert done.returncode == code, f"ftctl {' '.join(args)} exited {done.returncode}\n{done.stderr}"
        line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith("IMPORTED "))
        return done, set(json.loads(line.removeprefix("IMPORTED ")))

    def argv(self, *args: str) -> list[str]:
        """`python -m ftctl ...` for this workspace."""
        return [sys.executable, "-m", "ftctl", *self.args(*args)]

    def process(
        self, *args: str, code: int | None = 0, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`ftctl args` as a separate process; asserts its exit code unless `code` is None."""
        done = subprocess.run(
            self.argv(*args), input=input, capture_output=True, text=True, env=self.env(), cwd=self.root,
            timeout=timeout,
        )  # fmt: skip
        if code is not None:
            assert done.returncode == code, (
                f"ftctl {' '.join(args)} exited {done.returncode}, wanted {code}\n"
                f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )
        return done

    # --- reading the workspace ---------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return json.loads((self.workspace / "state.json").read_text(encoding="utf-8"))

    def record(self, stage: str) -> dict[str, Any]:
        """The stage's record in the state file ({} when there is none, or no readable state yet)."""
        try:
            return dict(self.state().get("stages", {}).get(stage) or {})
        except (OSError, ValueError):
            return {}

    def outputs(self, stage: str) -> dict[str, Any]:
        return dict(self.state()["stages"][stage]["outputs"])

    def status(self) -> dict[str, dict[str, Any]]:
        return {stage["name"]: stage for stage in self.json("status")["stages"]}

    def key(self) -> str:
        return Path(self.outputs("deploy")["key_file"]).read_text().strip()

    # --- copies ------------------------------------------------------------------------------------

    def load(self, snapshot: Ftctl) -> Ftctl:
        """Replace this workspace by a relocated copy of `snapshot`'s (see `relocate`); returns self."""
        if self.workspace.exists():
            shutil.rmtree(self.workspace)
        shutil.copytree(
            snapshot.workspace, self.workspace, ignore=shutil.ignore_patterns("lock"), symlinks=True
        )
        relocate(snapshot.root, self.root)
        return self

    def copy(self, dest: Path, ignore: tuple[str, ...] = (), *, relocated: bool = True) -> Ftctl:
        """A copy of the whole root at `dest`, without the workspace lock. Relocated (the default), it is
        self-contained: see `relocate`. Not relocated, its records still name this workspace's files
        (a job it re-attaches to, say), which it must only read."""
        shutil.copytree(self.root, dest, ignore=shutil.ignore_patterns("lock", *ignore), symlinks=True)
        if relocated:
            relocate(self.root, dest)
        else:
            # ftctl adopts a copy it recognises (ftctl.relocation): it would forget the job this copy is
            # meant to re-attach to. Without the workspace's identity the copy is what a workspace of an
            # older ftctl is, which ftctl cannot tell from the original.
            state_file = dest / ".ftctl" / "state.json"
            if state_file.exists():
                state = json.loads(state_file.read_text())
                state.pop("workspace", None)
                state_file.write_text(json.dumps(state))
        copy = Ftctl(dest, options=self.options, settings=self.settings, environ=self.environ)
        copy.config = dest / self.config.name if self.config is not None else None
        return copy


def relocate(old: Path, new: Path) -> None:
    """Make the workspace tree copied from `old` to `new` refer to its own files.

    Every absolute path under `old` recorded in its state file, its jobs' JSON files and MLflow's
    registry (artifact locations, model sources) is rewritten to name the same file under `new`, and the
    upstream digests in the stages' fingerprints (which hash the upstream's outputs, paths included) are
    recomputed where they matched before, so what was up to date stays up to date. Only a workspace with no
    live endpoint may be copied: a copied endpoint record would name the original's server."""
    from ftctl import state as st
    from ftctl.pipeline import STAGES
    from ftctl.state import stage_digest

    workspace = new / ".ftctl"
    if not workspace.is_dir():
        return
    pattern = re.compile(re.escape(str(old)) + r"(?=[/\"']|$)")
    # Not the files a stage's output signature covers (a job's outputs/): only records about them.
    records = ("jobs/*/*.json", "jobs/*/*.jsonl", "endpoints/*/*.json", "plan/*.json", "state.json.*")
    for path in [found for pattern_ in records for found in workspace.glob(pattern_) if found.is_file()]:
        text = path.read_text(encoding="utf-8")
        if pattern.search(text):
            path.write_text(pattern.sub(str(new), text), encoding="utf-8")
    state_file = workspace / "state.json"
    if state_file.is_file():
        text = state_file.read_text(encoding="utf-8")
        before, after = json.loads(text), json.loads(pattern.sub(str(new), text))
        for stage in STAGES:
            old_rec, new_rec = st.record(before, stage.name), st.record(after, stage.name)
            old_up = (old_rec.get("fingerprint") or {}).get("upstream") or {}
            new_up = (new_rec.get("fingerprint") or {}).get("upstream") or {}
            for up in stage.upstream:
                if up in old_up and old_up[up] == stage_digest(st.record(before, up)):
                    new_up[up] = stage_digest(st.record(after, up))
        state_file.write_text(json.dumps(after, indent=2), encoding="utf-8")
    db = workspace / "mlflow.db"
    if db.is_file():
        _relocate_sqlite(db, str(old), str(new))


def _relocate_sqlite(db: Path, old: str, new: str) -> None:
    """Replace the prefix `old` by `new` in every text column of every table of an SQLite file."""
    with closing(sqlite3.connect(db)) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [
                row[1]
                for row in conn.execute(f'PRAGMA table_info("{table}")')
                if any(kind in row[2].upper() for kind in ("CHAR", "TEXT", "CLOB"))
            ]
            for column in columns:
                update = f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?)'
                conn.execute(f'{update} WHERE instr("{column}", ?) > 0', (old, new, old))
        conn.commit()


def run_in_terminal(argv: list[str], env: dict[str, str], cwd: Path, timeout_s: float = 300) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; everything it drew there."""
    master, slave = pty.openpty()
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "40"}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the command exited and the terminal closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=timeout_s)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    drawn = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, drawn[-3000:]
    return drawn


def spawn_server(
    model_dir: Path, key_file: Path, log_path: Path, *extra: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A real endpoint process (ftctl.backends.local.server) on a 127.0.0.1 socket it inherits, as
    `ftctl deploy` starts it, its output in `log_path`: the process and its port (not waited for)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    command = [sys.executable, "-m", "ftctl.backends.local.server", "--model-dir", str(model_dir),
               "--key-file", str(key_file), "--fd", str(sock.fileno()), *extra]  # fmt: skip
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(command, pass_fds=[sock.fileno()], stdout=log_file, stderr=subprocess.STDOUT)
    sock.close()  # the child holds the listening socket now
    return proc, port
