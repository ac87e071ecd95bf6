"""The workspace's bounds (issue 16): what ftctl reads ends in bounded time and memory whatever the
workspace holds, a damaged record never locks the user out (the escape hatches always work), and the
workspace option itself is checked. Each case failed on the code before its fix.

Everything runs in child processes with a time limit: a regression shows as a timeout, not a hung suite.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

LIMIT_S = 60  # far above what any case needs; a hang is what it catches


def ftctl(cwd: Path, *args: str, timeout: float = LIMIT_S) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTCTL_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-m", "ftctl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        stdin=subprocess.DEVNULL,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr, done.stderr
    return done.stderr


@pytest.fixture
def prepared(prepared_ws, tmp_path: Path) -> Path:
    """A workspace where auth and prepare-data ran (no model is trained: nothing here needs one): a
    self-contained copy of the session's (its state records where its own files are)."""
    return prepared_ws.copy(tmp_path / "ws").root


def write_state(root: Path, state: dict) -> Path:
    path = root / ".ftctl" / "state.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))
    return path


def state_with(**deploy_outputs: object) -> dict:
    record = {
        "status": "succeeded", "attempt": 1, "started_at": "2026-12-01T10:00:00+00:00",
        "ended_at": "2026-12-01T10:01:00+00:00", "fingerprint": None, "outputs": {}, "error": None,
    }  # fmt: skip
    return {
        "schema_version": 1,
        "backend": "local",
        "run_id": "x",
        "stages": {"auth": dict(record), "deploy": {**record, "outputs": dict(deploy_outputs)}},
    }


# --- damaged records: refused on load, and the escape hatches still work ---------------------------


@pytest.mark.parametrize(
    "field, state",
    [
        ("started_at", {**state_with(), "stages": {"auth": {**state_with()["stages"]["auth"],
                                                             "started_at": "2026-12-01T10:00:00"}}}),
        ("expires_at", state_with(endpoint_name="ep", expires_at="2026-12-01T10:00:00")),
    ],
)  # fmt: skip
def test_a_time_without_a_utc_offset_is_refused_and_reset_still_works(
    tmp_path: Path, field: str, state: dict
) -> None:
    write_state(tmp_path, state)
    err = one_line_error(ftctl(tmp_path, "status"), 2)
    assert field in err and "UTC offset" in err
    backup = tmp_path / ".ftctl" / "state.json.bak"
    backup.write_text(json.dumps(state))
    one_line_error(ftctl(tmp_path, "reset", "--restore-backup"), 2)  # the backup is damaged as well
    done = ftctl(tmp_path, "reset", "--all")
    assert done.returncode == 0, done.stderr
    assert ftctl(tmp_path, "status").returncode == 0


def test_a_deeply_nested_state_file_is_refused_and_reset_still_works(tmp_path: Path) -> None:
    path = tmp_path / ".ftctl" / "state.json"
    path.parent.mkdir(parents=True)
    depth = 100_000
    path.write_text('{"schema_version": 1, "stages": ' + "[" * depth + "]" * depth + "}")
    err = one_line_error(ftctl(tmp_path, "status"), 2)
    assert "state.json" in err and "nested" in err
    done = ftctl(tmp_path, "reset", "--all")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".ftctl" / "state.json.corrupt").exists()


def test_a_huge_state_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / ".ftctl" / "state.json"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as handle:  # sparse: 3 GB on paper, nothing on disk
        handle.truncate(3 * 1024**3)
    started = time.monotonic()
    err = one_line_error(ftctl(tmp_path, "status"), 2)
    assert time.monotonic() - started < 20
    assert "state.json" in err and "too large" in err
    assert ftctl(tmp_path, "reset", "--all").returncode == 0


# --- the workspace option --------------------------------------------------------------------------


def test_an_empty_workspace_option_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    err = one_line_error(ftctl(tmp_path, "-w", "", "prepare-data"), 2)
    assert "--workspace" in err
    assert list(tmp_path.iterdir()) == []


def test_a_workspace_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    err = one_line_error(ftctl(tmp_path, "-w", "notes.txt", "auth"), 2)
    assert "notes.txt" in err and "not a folder" in err
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


@pytest.mark.parametrize("where", ["under-a-file", "name-too-long"])
def test_a_workspace_path_that_cannot_be_a_folder_is_refused(tmp_path: Path, where: str) -> None:
    """A path under a file (`-w /dev/null/x`, `-w notes.txt/ws`) and a folder name over 255 bytes were
    exit 1 "unexpected NotADirectoryError" / "unexpected OSError" from deep inside a stage."""
    (tmp_path / "notes.txt").write_text("mine\n")
    given = "notes.txt/ws" if where == "under-a-file" else "w" * 300
    err = one_line_error(ftctl(tmp_path, "-w", given, "auth"), 2)
    assert "--workspace" in err
    assert ("notes.txt" in err and "not a folder" in err) if where == "under-a-file" else "255 bytes" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def _read_only(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`ftctl -w WS ARGS` with WS mounted read-only (a bind mount in a mount namespace of its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTCTL_", "MLFLOW_"))}
    inner = f"mount --bind -o ro {shlex.quote(str(ws))} {shlex.quote(str(ws))} && exec " + shlex.join(
        [sys.executable, "-m", "ftctl", "-w", str(ws), *args]
    )
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", inner], capture_output=True, text=True, timeout=LIMIT_S, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_a_read_only_workspace_is_one_line_naming_it(tmp_path: Path) -> None:
    """A workspace on a read-only mount: `status` answers; a command that must write says so in one
    line, exit 2 (it was exit 1, "unexpected OSError: [Errno 30] Read-only file system: .../lock")."""
    ws = tmp_path / "ws"
    assert ftctl(tmp_path, "-w", str(ws), "run", "--to", "auth").returncode == 0
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {ws} {ws}"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace here: {probe.stderr.decode().strip()}")
    assert _read_only(ws, "status").returncode == 0
    for args in (("prepare-data",), ("reset", "--all")):
        err = one_line_error(_read_only(ws, *args), 2)
        assert str(ws) in err and "read-only" in err.lower(), err


# --- reads that never end --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_status_answers_when_a_prepared_file_is_not_a_regular_file(prepared: Path, kind: str) -> None:
    root = prepared
    target = root / ".ftctl" / "data" / "train_sft.jsonl"
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    started = time.monotonic()
    done = ftctl(root, "status", "--json")
    assert time.monotonic() - started < 10
    assert done.returncode == 0, done.stderr
    stages = {s["name"]: s for s in json.loads(done.stdout)["stages"]}
    assert stages["prepare-data"]["stale"], stages["prepare-data"]
    assert "train_sft.jsonl is not a regular file" in stages["prepare-data"]["stale_reason"]


def test_a_model_folder_that_is_no_model_is_refused_before_it_is_hashed(
    prepared: Path, tmp_path: Path
) -> None:
    big = tmp_path / "not-a-model"
    for i in range(200):  # a folder of many files: hashing it all is the bug
        sub = big / f"d{i}"
        sub.mkdir(parents=True)
        for j in range(50):
            (sub / f"f{j}.bin").write_bytes(os.urandom(4096))
    calls = tmp_path / "calls.txt"
    # Count the files ftctl hashes, in the child, by wrapping the one function that reads them.
    script = (
        "import sys\nfrom ftctl import state\nreal = state.file_digest\n"
        f"def counted(p):\n    open({str(calls)!r}, 'a').write('x')\n    return real(p)\n"
        "state.file_digest = counted\nfrom ftctl.cli.app import main\n"
        "sys.argv = ['ftctl', *sys.argv[1:]]\nmain()\n"
    )
    for args in (["--set", f"model.name={big}", "status"], ["pick-model", "--model", str(big)]):
        done = subprocess.run(
            [sys.executable, "-c", script, *args],
            cwd=prepared,  # authenticated (the first stages ran)
            capture_output=True,
            text=True,
            timeout=LIMIT_S,
        )
        if args[-1] == "status":
            assert done.returncode == 0, done.stderr
        else:
            assert done.returncode == 2 and "config.json" in done.stderr, done.stderr
        hashed = len(calls.read_text()) if calls.exists() else 0
        assert hashed < 100, f"ftctl {' '.join(args)} hashed {hashed} files of a folder that is no model"
        calls.unlink(missing_ok=True)


# --- names that become paths -----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["../escape-", "a/b-", ".."])
def test_an_endpoint_name_prefix_that_is_a_path_is_refused(tmp_path: Path, prefix: str) -> None:
    err = one_line_error(ftctl(tmp_path, "--set", f"deploy.endpoint_name_prefix={prefix}", "status"), 2)
    assert "deploy.endpoint_name_prefix" in err
    assert not (tmp_path.parent / "escape-").exists()


# --- stdin closed ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args", ["chat", "score --file -"])
def test_a_closed_stdin_is_a_clear_error(tmp_path: Path, args: str) -> None:
    """`ftctl chat <&-`: Python starts with no stdin at all (sys.stdin is None)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}
    done = subprocess.run(
        ["bash", "-c", f'"{sys.executable}" -m ftctl {args} <&-'],
        cwd=tmp_path, capture_output=True, text=True, timeout=LIMIT_S, env=env,
    )  # fmt: skip
    err = one_line_error(done, 2)
    assert "standard input" in err


# --- writes outside the workspace ------------------------------------------------------------------


def test_a_data_folder_replaced_by_a_link_is_not_written_through(prepared: Path, tmp_path_factory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    data = prepared / ".ftctl" / "data"
    import shutil

    shutil.rmtree(data)
    data.symlink_to(outside, target_is_directory=True)
    err = one_line_error(ftctl(prepared, "prepare-data", "--force"), 2)
    assert str(data) in err and "symbolic link" in err
    assert list(outside.iterdir()) == []


def test_a_planted_endpoint_folder_is_passed_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Endpoint folder names are predictable (prefix + unix time): one planted as a link to a file
    elsewhere is never used, so the server's log is never appended to that file."""
    from ftctl.backends.local.stages import deploy

    root = tmp_path / "ws"
    endpoints = root / "endpoints"
    endpoints.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    monkeypatch.setattr(deploy.time, "time", lambda: 1_800_000_000.5)
    (endpoints / "ep-1800000000").symlink_to(victim)
    (endpoints / "ep-1800000001").mkdir()  # an existing folder is not reused either
    name, folder = deploy._new_endpoint_dir(root, endpoints, "ep-")
    assert name == "ep-1800000002" and folder == endpoints / name and folder.is_dir()
    assert not folder.is_symlink() and victim.read_text() == "keep\n"


# --- text from data or a model reaches the terminal escaped ----------------------------------------

HOSTILE = "hi\x1b]52;c;cHduZWQ=\x07 \x1b[2J\x9b31m done\r"


@pytest.fixture
def hostile_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deployed endpoint, as `ftctl chat` and `score --file` find it, answering with terminal escape
    sequences (an OSC 52 clipboard write, a screen clear, a C1 CSI, a carriage return)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ftctl import chat

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"output": HOSTILE}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    found = chat.Endpoint("ep", "demo", url, f"{url}/score", "k", "/dev/null", None, None)
    monkeypatch.setattr(chat, "endpoint", lambda ctx, command: found)
    yield
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "args, stdin",
    [(["chat"], "Hello\n"), (["score", "--file", "-"], '[{"role": "user", "content": "Hello"}]')],
)
def test_a_reply_with_terminal_escapes_is_shown_escaped(ftctl, hostile_endpoint, args, stdin) -> None:
    result = ftctl(*args, input=stdin)
    shown = result.stdout + result.stderr
    assert "done" in shown
    for raw in ("\x1b", "\x07", "\x9b", "\r"):
        assert raw not in shown, repr(shown)
    assert "\\x1b]52;c;" in shown and "\\x1b[2J" in shown
