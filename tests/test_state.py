from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftctl.errors import LockTimeout, StateError
from ftctl.state import StateStore, WorkspaceLock, file_signature


def test_save_keeps_previous_version_as_backup(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    first = store.load()
    first["run_id"] = "one"
    store.save(first)
    second = store.load()
    second["run_id"] = "two"
    store.save(second)
    assert store.load()["run_id"] == "two"
    assert json.loads(store.backup.read_text())["run_id"] == "one"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_state_names_the_file_and_the_way_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = store.load()
    state["run_id"] = "good"
    store.save(state)
    store.save(state)
    store.path.write_text('{"schema_version": 1, "stag')
    with pytest.raises(StateError) as info:
        store.load()
    assert str(store.path) in info.value.message
    assert "ftctl reset --restore-backup" in (info.value.hint or "")
    store.restore_backup()
    assert store.load()["run_id"] == "good"


def test_corrupt_file_never_replaces_the_backup(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = store.load()
    state["run_id"] = "good"
    store.save(state)
    store.save(state)
    store.path.write_text("garbage")
    state["run_id"] = "new"
    store.save(state)
    assert json.loads(store.backup.read_text())["run_id"] == "good"


def test_unknown_schema_version(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"schema_version": 99, "stages": {}}))
    with pytest.raises(StateError, match="schema version 99"):
        StateStore(tmp_path).load()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ftctl.state import WorkspaceLock
    with WorkspaceLock(Path(sys.argv[1]), "ftctl submit", 5):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_second_process_times_out_naming_the_owner(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        messages: list[str] = []
        with pytest.raises(LockTimeout) as info:
            WorkspaceLock(tmp_path, "ftctl run", 0.3, notify=messages.append).acquire()
        assert f"pid {holder.pid}" in info.value.message
        assert "`ftctl submit`" in info.value.message
        assert messages and "waiting up to 0.3s" in messages[0]
    finally:
        holder.kill()
        holder.wait()


def test_dead_owner_lock_is_taken_over_with_a_message(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()  # kill -9: no cleanup, the owner record stays behind
    holder.wait()
    messages: list[str] = []
    lock = WorkspaceLock(tmp_path, "ftctl run", 1, notify=messages.append)
    lock.acquire()
    try:
        assert any("taking over" in m and f"pid {holder.pid}" in m for m in messages)
        assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_file_signature_tracks_content(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text("one\n")
    first = file_signature(path)
    path.write_text("two\n")
    assert file_signature(path) != first
    assert file_signature(tmp_path / "missing") == "missing"
    assert file_signature(tmp_path).startswith("tree:")


def test_a_writers_digest_stands_only_for_the_file_it_wrote(tmp_path: Path) -> None:
    """A writer that hashed what it wrote (prepare-data's splits) vouches for the file's signature, which
    is then not read again; a file changed since (its size or mtime), or another file put in its place,
    is hashed as usual."""
    import hashlib

    from ftctl.state import vouch_digest

    def sha(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def identity(path: Path) -> tuple[int, int, int]:
        now = path.stat()
        return (now.st_ino, now.st_size, now.st_mtime_ns)

    kept, grown, replaced = (tmp_path / name for name in ("kept", "grown", "replaced"))
    for path in (kept, grown, replaced):
        path.write_bytes(b"as written\n")
    written = {path: identity(path) for path in (kept, grown, replaced)}
    with grown.open("ab") as handle:  # appended to after its writer closed it
        handle.write(b"more\n")
    other = tmp_path / "other"
    other.write_bytes(b"as written\n")
    other.replace(replaced)  # the same bytes, another file (inode)
    for path in (kept, grown, replaced):
        vouch_digest(path, written[path], "sha256:the writer's")
    assert file_signature(kept) == "sha256:the writer's"  # taken as is: not read
    assert file_signature(grown) == sha(b"as written\nmore\n")
    assert file_signature(replaced) == sha(b"as written\n")
    vouch_digest(tmp_path / "missing", written[kept], "sha256:the writer's")
    assert file_signature(tmp_path / "missing") == "missing"


def test_a_zombie_is_not_alive() -> None:
    """An ended process not yet collected by its parent is not alive: its temp files may go."""
    import time

    from ftctl.state import pid_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert pid_alive(child.pid) or child.poll() is not None  # running, or already ended
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").exists() and time.monotonic() < deadline:
            if Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z":
                break  # ended, not collected (no wait() yet): a zombie
            time.sleep(0.01)
        else:
            pytest.skip("no /proc here to see the zombie")
        assert not pid_alive(child.pid)
    finally:
        child.wait()
    assert pid_alive(os.getpid())
