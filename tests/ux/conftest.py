"""Fixtures for the user-facing tests: one real trained workspace for the whole session (a short
training run, followed by `ftctl submit` on a pseudo-terminal), copied for tests that change it, and
one copy with a live endpoint."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ftctl.cli.app import app

# A short training run: 8 steps, the train loss logged every 2 steps, eval every 2 (and before).
CONFIG = """\
finetune:
  max_steps: 8
  logging_steps: 2
"""


class Workspace:
    """`ftctl` against one workspace with the test config, in-process (CliRunner) or as a process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workspace = root / ".ftctl"
        self.config = root / "ftctl-test.yaml"
        if not self.config.exists():
            self.config.write_text(CONFIG)
        self.transcripts: dict[str, str] = {}  # what commands that built it printed, by name

    def __call__(self, *args: str, code: int | None = 0, input: str | None = None) -> Any:
        clean = {name: None for name in os.environ if name.startswith("FTCTL_")}
        result = CliRunner().invoke(
            app,
            ["--workspace", str(self.workspace), "--config", str(self.config), *args],
            input=input,
            env=clean,
        )
        if code is not None:
            assert result.exit_code == code, (
                f"ftctl {' '.join(args)} exited {result.exit_code}, wanted {code}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}\n{result.exception!r}"
            )
        return result

    def json(self, *args: str, code: int = 0, input: str | None = None) -> Any:
        return json.loads(self("--json", *args, code=code, input=input).stdout)

    def env(self) -> dict[str, str]:
        """The environment for an `ftctl` process (and the notebook's kernel) on this workspace."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}
        env.update(FTCTL_WORKSPACE=str(self.workspace), FTCTL_CONFIG=str(self.config))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def copy(self, dest: Path, ignore: tuple[str, ...] = ()) -> Workspace:
        """A copy (its state's paths still name this workspace's files, which it reads, never writes)."""
        shutil.copytree(self.root, dest, ignore=shutil.ignore_patterns("lock", *ignore))
        return Workspace(dest)

    def key(self) -> str:
        deploy = json.loads((self.workspace / "state.json").read_text())["stages"]["deploy"]["outputs"]
        return Path(deploy["key_file"]).read_text().strip()


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


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """auth .. register for real, once; tests must not change it (copy it instead).

    The training job is started with `submit --no-wait` and followed by `ftctl submit` on a
    pseudo-terminal, as a user at a terminal would see it (transcripts["terminal"]). A copy taken while
    the job ran, where submit is still recorded as running, is kept as `interrupted`: an `ftctl submit`
    there re-attaches to the same job and replays its progress, piped (see test_progress)."""
    ws = Workspace(tmp_path_factory.mktemp("trained"))
    ws.transcripts["prepare"] = ws("run", "--to", "prepare-data").stderr
    ws("submit", "--no-wait")
    ws.interrupted = ws.copy(tmp_path_factory.mktemp("interrupted") / "ws", ignore=("jobs",))  # type: ignore[attr-defined]
    ws.transcripts["terminal"] = run_in_terminal([sys.executable, "-m", "ftctl", "submit"], ws.env(), ws.root)
    ws.transcripts["register"] = ws("register").stderr
    return ws


@pytest.fixture(scope="session")
def deployed(trained: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A copy of the trained workspace with its endpoint up (torn down at the end of the session)."""
    ws = trained.copy(tmp_path_factory.mktemp("deployed") / "ws")
    ws("deploy")
    try:
        yield ws
    finally:
        ws("teardown", code=None)


@pytest.fixture
def scratch(trained: Workspace, tmp_path: Path) -> Workspace:
    """A private copy of the trained workspace."""
    return trained.copy(tmp_path / "ws")


@pytest.fixture
def empty(tmp_path: Path) -> Workspace:
    """A workspace where nothing has run yet."""
    return Workspace(tmp_path)


@pytest.fixture
def fake_endpoint() -> Iterator[tuple[Any, list[dict[str, Any]]]]:
    """A stand-in scoring endpoint on 127.0.0.1 that records what it is sent and answers `reply N`
    (HTTP 400 when the last user turn contains "fail")."""
    from ftctl.chat import Endpoint

    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.headers["Authorization"] == "Bearer fake-key"
            requests.append(body)
            last = body["input_data"]["input_string"][0][-1]["content"]
            status, answer = (400, {"error": "parameter nope is bad"}) if "fail" in last else (
                200, {"output": f"reply {len(requests)}"})  # fmt: skip
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    ep = Endpoint("fake", "demo", url, f"{url}/score", "fake-key", "/dev/null", None, None)
    try:
        yield ep, requests
    finally:
        server.shutdown()
        server.server_close()
