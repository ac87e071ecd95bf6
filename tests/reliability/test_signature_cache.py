"""The content hashes kept between commands (<workspace>/signatures.json, ftctl.state.SignatureCache):
a hash is used only while the file is the one that was hashed, and a damaged, hostile or unwritable
cache costs a hash, never a wrong signature or an error."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from ftctl import state as st


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch):
    """A new process's view: no hash in memory, the cache read from its file again; counts the reads."""
    reads: list[Path] = []
    real = st.file_digest

    def counted(path: Path) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(st, "file_digest", counted)

    def start(workspace: Path) -> list[Path]:
        monkeypatch.setattr(st, "_signatures", {})
        monkeypatch.setattr(st, "_cache", None)
        st.keep_signatures_in(workspace)
        reads.clear()
        return reads

    return start


def old_file(path: Path, data: bytes) -> Path:
    """A file to hash (`aged` makes its last change count as long past)."""
    path.write_bytes(data)
    return path


@pytest.fixture
def aged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file counts as written long before it is hashed (the clock read at hashing runs ahead)."""
    real = time.time_ns
    monkeypatch.setattr(st.time, "time_ns", lambda: real() + 10 * st.SignatureCache.RACY_NS)


def test_a_second_command_does_not_hash_an_unchanged_file_again(tmp_path: Path, fresh, aged) -> None:
    (tmp_path / "data").mkdir()
    data = old_file(tmp_path / "data" / "train.jsonl", b'{"messages": []}\n')
    old_file(tmp_path / "data" / "test.jsonl", b"")
    reads = fresh(tmp_path)
    assert st.file_signature(data) == sha(b'{"messages": []}\n') and reads == [data]
    folder = st.file_signature(tmp_path / "data")
    assert (tmp_path / "signatures.json").exists()
    reads = fresh(tmp_path)  # the next command
    assert st.file_signature(data) == sha(b'{"messages": []}\n') and reads == []
    assert st.file_signature(tmp_path / "data") == folder and reads == []  # a folder: each file kept


def test_a_change_that_keeps_size_and_mtime_is_seen(tmp_path: Path, fresh, aged) -> None:
    """Same size, mtime set back (`touch -d`, rsync -t): the ctime moved, so the file is hashed again."""
    data = old_file(tmp_path / "train.jsonl", b"aaaa\n")
    fresh(tmp_path)
    st.file_signature(data)
    before = data.stat()
    data.write_bytes(b"bbbb\n")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    reads = fresh(tmp_path)
    assert st.file_signature(data) == sha(b"bbbb\n") and reads == [data]


def test_a_file_replaced_by_another_is_hashed(tmp_path: Path, fresh, aged) -> None:
    data = old_file(tmp_path / "train.jsonl", b"first\n")
    fresh(tmp_path)
    st.file_signature(data)
    other = old_file(tmp_path / "other", b"other\n")
    os.utime(other, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns))
    other.replace(data)
    reads = fresh(tmp_path)
    assert st.file_signature(data) == sha(b"other\n") and reads == [data]


def test_a_file_changed_just_now_is_not_kept(tmp_path: Path, fresh) -> None:
    """Within RACY_NS of its last change, a file could change again within the same timestamp tick."""
    data = tmp_path / "train.jsonl"
    data.write_bytes(b"new\n")
    fresh(tmp_path)
    st.file_signature(data)
    reads = fresh(tmp_path)
    assert st.file_signature(data) == sha(b"new\n") and reads == [data]


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff not json",
        b'{"version": 1, "files": []}',
        b'{"version": 2, "files": {}}',
        b"[" * 100_000,
        b"",
    ],
    ids=["binary", "files-not-an-object", "other-version", "nested-too-deeply", "empty"],
)
def test_a_damaged_cache_costs_a_hash_and_is_written_anew(
    tmp_path: Path, fresh, aged, content: bytes
) -> None:
    data = old_file(tmp_path / "train.jsonl", b"rows\n")
    (tmp_path / "signatures.json").write_bytes(content)
    reads = fresh(tmp_path)
    assert st.file_signature(data) == sha(b"rows\n") and reads == [data]
    kept = json.loads((tmp_path / "signatures.json").read_text())
    assert kept["files"][str(data)][-1] == sha(b"rows\n")


def test_a_hostile_entry_is_not_believed_unless_it_matches_the_file(tmp_path: Path, fresh, aged) -> None:
    data = old_file(tmp_path / "train.jsonl", b"rows\n")
    now = data.stat()
    entries = {
        str(data): [now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns + 1, "sha256:forged"],
        "x": "not a list",
        "y": [1, 2, 3],
    }
    (tmp_path / "signatures.json").write_text(json.dumps({"version": 1, "files": entries}))
    reads = fresh(tmp_path)
    assert st.file_signature(data) == sha(b"rows\n") and reads == [data]
    entries[str(data)] = [now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns, 12345]  # not text
    (tmp_path / "signatures.json").write_text(json.dumps({"version": 1, "files": entries}))
    reads = fresh(tmp_path)
    assert st.file_signature(data) == sha(b"rows\n") and reads == [data]


def test_a_link_in_place_of_the_cache_is_neither_read_nor_written_through(
    tmp_path: Path, fresh, aged
) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    data = old_file(tmp_path / "train.jsonl", b"rows\n")
    now = data.stat()
    forged = {str(data): [now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns, "sha256:forged"]}
    elsewhere.write_text(json.dumps({"version": 1, "files": forged}))
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "signatures.json").symlink_to(elsewhere)
    fresh(workspace)
    assert st.file_signature(data) == sha(b"rows\n")
    assert (workspace / "signatures.json").is_symlink()
    assert json.loads(elsewhere.read_text())["files"] == forged


def test_no_workspace_is_created_and_an_unwritable_cache_is_no_error(tmp_path: Path, fresh, aged) -> None:
    data = old_file(tmp_path / "train.jsonl", b"rows\n")
    fresh(tmp_path / "not-yet")
    assert st.file_signature(data) == sha(b"rows\n")
    assert not (tmp_path / "not-yet").exists()
    blocked = tmp_path / "blocked"
    (blocked / "signatures.json").mkdir(parents=True)  # cannot be replaced by a file
    fresh(blocked)
    assert st.file_signature(data) == sha(b"rows\n")
    assert sorted(p.name for p in blocked.iterdir()) == ["signatures.json"]  # no temp file left
    assert (blocked / "signatures.json").is_dir()


def test_the_cache_keeps_the_newest_entries_only(tmp_path: Path, fresh, aged, monkeypatch) -> None:
    monkeypatch.setattr(st.SignatureCache, "MAX_ENTRIES", 3)
    files = [old_file(tmp_path / f"f{i}", f"{i}\n".encode()) for i in range(5)]
    fresh(tmp_path)
    for path in files:
        st.file_signature(path)
    kept = json.loads((tmp_path / "signatures.json").read_text())["files"]
    assert list(kept) == [str(path) for path in files[2:]]
