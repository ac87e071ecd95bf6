"""The stage-state file (<workspace>/state.json) and the workspace lock.

Writes are atomic: a temp file in the same folder, fsync, then os.replace, with the previous version
kept as state.json.bak. One lock per workspace (fcntl.flock on <workspace>/lock) whose file holds the
owner record (pid, host, command, started_at); the kernel drops a flock when its process dies, so a dead
owner's lock is simply taken over (with a message naming the dead owner).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import json
import os
import secrets
import socket
import stat
import sys
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from ftctl.errors import LockTimeout, StateError, UsageError

SCHEMA_VERSION = 1
STATE_FILE = "state.json"
# A state file is a few KiB (nine records); a larger one is not one, and is refused before it is read.
STATE_MAX_BYTES = 16 * 1024 * 1024
BACKUP_SUFFIX = ".bak"
LOCK_FILE = "lock"

PENDING, RUNNING, SUCCEEDED, FAILED = "pending", "running", "succeeded", "failed"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def empty_record() -> dict[str, Any]:
    return {
        "status": PENDING,
        "attempt": 0,
        "started_at": None,
        "ended_at": None,
        "fingerprint": None,
        "outputs": {},
        "output_signatures": {},
        "error": None,
    }


def _refuse_link(path: Path) -> None:
    """StateError if `path` is a symbolic link (ftctl never reads or writes through one)."""
    if path.is_symlink():
        raise StateError(
            f"{path} is a symbolic link; ftctl does not follow links in its workspace",
            hint=f"remove the link (rm {path}) and run the command again",
        )


class TooLarge(ValueError):
    """A file is larger than what ftctl parses of its kind."""


def read_text_nofollow(path: Path, limit: int | None = None) -> str:
    """The text of the regular file `path`, opened without following a symbolic link (StateError if it
    is a link or not a regular file; FileNotFoundError if it is missing; TooLarge if it holds more than
    `limit` bytes, found before anything is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse_link(path)
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{path} is not a regular file; ftctl reads only regular files there")
        if limit is not None and info.st_size > limit:
            raise TooLarge(f"{info.st_size:,} bytes, over {limit:,}")
        return handle.read().decode("utf-8")


def open_log(path: Path) -> BinaryIO:
    """The regular file `path`, opened to append to (created if missing), without following a symbolic
    link: a link or a FIFO, device or folder in its place is a StateError naming it. For the logs of the
    processes ftctl starts, which outlive the command that opened them."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse_link(path)
        if exc.errno != errno.ENXIO:  # a FIFO nobody reads
            raise
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd >= 0:
            os.close(fd)
        raise StateError(f"{path} is not a regular file; ftctl writes its logs only to regular files")
    return os.fdopen(fd, "ab")


def make_dirs(path: Path, root: Path, mode: int = 0o777, new: bool = False) -> Path:
    """Create the folder `path` and those between it and `root` (the workspace), following no symbolic
    link from `root` down: a link or a non-folder on the way is a StateError naming it, and nothing is
    created through it. With `new`, `path` itself must not exist yet (FileExistsError). A `path` outside
    `root` (a folder the user configured) is only created. Returns `path`."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        path.mkdir(mode=mode, parents=True, exist_ok=not new)
        return path
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for index, part in enumerate(parts):
        current = current / part
        last = index == len(parts) - 1
        if new and last and (current.is_symlink() or current.exists()):
            raise FileExistsError(errno.EEXIST, "exists already", str(current))
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise StateError(
                f"{current} is {'a symbolic link' if current.is_symlink() else 'not a folder'}; ftctl "
                "writes only into real folders inside its workspace",
                hint=f"remove {current} and run the command again",
            )
        try:
            current.mkdir(mode=mode)
        except FileExistsError:
            if new and last:
                raise
    return path


def atomic_write_text(path: Path, text: str, mode: int = 0o644, durable: bool = True) -> None:
    """Write `text` to `path` so that readers see the old or the new file, never a partial one; with
    `durable`, on the disk before this returns (a cache need not be).

    The temp file gets a fresh name, created exclusively and without following links; a `path` that is
    a symbolic link is refused (StateError naming it), never written through."""
    _refuse_link(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if not durable:
        return
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class StateStore:
    """Reads and writes <workspace>/state.json."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.path = workspace / STATE_FILE
        self.backup = workspace / (STATE_FILE + BACKUP_SUFFIX)

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, forgetting: Collection[str] = ()) -> dict[str, Any]:
        """The current state; a fresh one if the workspace has none yet. The records of the stages in
        `forgetting` are not checked: `ftctl reset STAGE` replaces them, damaged or not."""
        if not self.path.exists() and not self.path.is_symlink():
            return {"schema_version": SCHEMA_VERSION, "backend": None, "run_id": None, "stages": {}}
        return self._checked(self.path, forgetting)

    def _checked(self, path: Path, forgetting: Collection[str] = ()) -> dict[str, Any]:
        """The state `path` holds, every record validated (StateError naming what is wrong)."""
        try:
            data = json.loads(read_text_nofollow(path, STATE_MAX_BYTES))
        except TooLarge as exc:
            raise self._corrupt(path, f"is too large to be a state file ({exc})") from None
        except RecursionError:
            raise self._corrupt(path, "cannot be parsed (nested too deeply)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._corrupt(path, f"cannot be parsed ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise self._corrupt(path, "does not hold a stage-state object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StateError(
                f"{path} has schema version {version!r}; this ftctl reads version {SCHEMA_VERSION}",
                hint="use the ftctl version that wrote it, or start over with `ftctl reset --all`",
            )
        self._check_records(path, data, forgetting)
        return data

    def _check_records(self, path: Path, data: dict[str, Any], forgetting: Collection[str] = ()) -> None:
        from ftctl.backends import NAMES
        from ftctl.records import check_record

        if data.get("backend") is not None and data.get("backend") not in NAMES:
            raise self._corrupt(path, f"names an unknown backend {data.get('backend')!r}")
        if not isinstance(data.get("run_id"), str | None):
            raise self._corrupt(path, "has a run_id that is not a string")
        for stage, record in data["stages"].items():
            problem = None if stage in forgetting else check_record(stage, record)
            if problem:
                raise StateError(
                    f"state file {path}: stage {stage}: {problem}",
                    hint=f"fix the record by hand, forget it with `ftctl reset {stage}`, or put back the "
                    "previous version with `ftctl reset --restore-backup`",
                )

    def _corrupt(self, path: Path, why: str) -> StateError:
        if self.backup.exists():
            hint = (
                f"restore the previous version with `ftctl reset --restore-backup` "
                f"(copies {self.backup.name} over {self.path.name}), or start over with `ftctl reset --all`"
            )
        else:
            hint = "start over with `ftctl reset --all` (no backup exists)"
        return StateError(f"state file {path} {why}", hint=hint)

    def save(self, state: dict[str, Any]) -> None:
        self.workspace.mkdir(parents=True, exist_ok=True)
        from ftctl.records import strict_json

        text = json.dumps(strict_json(state), indent=2, sort_keys=False, allow_nan=False) + "\n"
        if self.path.exists():
            try:
                previous = read_text_nofollow(self.path)
                json.loads(previous)
            except (OSError, ValueError):
                pass  # never let a corrupt file overwrite the good backup
            else:
                # Copy, never move: state.json must exist at every instant. A kill between moving it
                # to the backup and writing the new one left no state file, and the workspace forgot
                # every stage (and the job and endpoint they had started).
                atomic_write_text(self.backup, previous)
        atomic_write_text(self.path, text)

    def restore_backup(self) -> None:
        """The backup back in place of the state file, once it is known to load (checked like the state
        file itself); a damaged backup leaves both files as they are."""
        if not self.backup.exists():
            raise StateError(f"no backup to restore: {self.backup} does not exist")
        try:
            self._checked(self.backup)
            text = read_text_nofollow(self.backup, STATE_MAX_BYTES)
        except (OSError, ValueError, StateError) as exc:
            why = exc.message if isinstance(exc, StateError) else str(exc)
            raise StateError(
                f"the backup is unusable too: {why}", hint="start over with `ftctl reset --all`"
            ) from None
        atomic_write_text(self.path, text)


def record(state: dict[str, Any], stage: str) -> dict[str, Any]:
    """The record of `stage` in `state` (created pending if missing)."""
    stages: dict[str, dict[str, Any]] = state.setdefault("stages", {})
    if stage not in stages:
        stages[stage] = empty_record()
    return stages[stage]


def snapshot(state: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(state)


# --- fingerprints ---------------------------------------------------------------------------------

HASH_LIMIT = 64 * 1024 * 1024  # files above this are fingerprinted by size + mtime, not content
TREE_MAX_FILES = 10_000  # a folder with more files is no model folder: its signature says so, unhashed


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


_signatures: dict[tuple[str, int, int, int, int], str] = {}  # one hash per file and process


class SignatureCache:
    """Content hashes kept between commands in <workspace>/signatures.json, like DVC's cache of file
    hashes: `ftctl status` hashed the same model and data files again on every call (272 -> 209 ms in the
    quickstart workspace with this cache; a user's data files of up to 64 MiB each cost more).

    An entry is `path -> [inode, size, mtime_ns, ctime_ns, digest]`, used only while all four still
    match the file. No writer can keep all four while changing the content: a write moves mtime and
    ctime (which no one can set back), a new file has a new ctime. A file whose ctime is within
    RACY_NS of the moment it was hashed is not kept (a change within the same timestamp tick of a
    coarse clock could otherwise leave mtime and ctime as they were). The file is a cache: written
    without fsync, read only when it is a regular file under MAX_BYTES that parses, and rewritten
    whole (last writer wins; a lost entry is hashed again). It is written only into a workspace that
    exists, and a workspace that cannot be written (read-only, another user's) just keeps none."""

    NAME = "signatures.json"
    MAX_ENTRIES = 4096
    MAX_BYTES = 4 * 1024 * 1024
    RACY_NS = 2_000_000_000

    def __init__(self, workspace: Path) -> None:
        self.path = workspace / self.NAME
        self._entries: dict[str, list[Any]] | None = None
        self._dirty = False

    def _load(self) -> dict[str, list[Any]]:
        if self._entries is None:
            self._entries = {}
            with contextlib.suppress(OSError, ValueError, StateError, RecursionError):
                data = json.loads(read_text_nofollow(self.path, self.MAX_BYTES))
                files = data.get("files") if isinstance(data, dict) and data.get("version") == 1 else None
                if isinstance(files, dict):
                    self._entries = files
        return self._entries

    def get(self, key: tuple[str, int, int, int, int]) -> str | None:
        entry = self._load().get(key[0])
        if isinstance(entry, list) and len(entry) == 5 and entry[:4] == list(key[1:]):
            return entry[4] if isinstance(entry[4], str) else None
        return None

    def put(self, key: tuple[str, int, int, int, int], digest: str, hashed_at_ns: int) -> None:
        if hashed_at_ns - key[4] < self.RACY_NS:
            return
        entries = self._load()
        entries.pop(key[0], None)  # to the end: the oldest entries go first
        entries[key[0]] = [*key[1:], digest]
        while len(entries) > self.MAX_ENTRIES:
            del entries[next(iter(entries))]
        self._dirty = True

    def save(self) -> None:
        if not self._dirty or not self.path.parent.is_dir():
            return
        self._dirty = False
        text = json.dumps({"version": 1, "files": self._entries}, separators=(",", ":"))
        with contextlib.suppress(OSError, StateError):
            atomic_write_text(self.path, text, durable=False)


_cache: SignatureCache | None = None


def keep_signatures_in(workspace: Path) -> None:
    """Keep the content hashes file_signature computes in `workspace` (SignatureCache), from now on."""
    global _cache
    if _cache is None or _cache.path.parent != workspace:
        _cache = SignatureCache(workspace)


def _tree_files(root: Path, limit: int) -> list[Path]:
    """Up to `limit` + 1 regular files under `root` (links to folders not followed), sorted."""
    found: list[Path] = []
    pending = [root]
    while pending and len(found) <= limit:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.is_file():
                    found.append(Path(entry.path))
    return sorted(found)


def _tree_signature(path: Path) -> str:
    files = _tree_files(path, TREE_MAX_FILES)
    if len(files) > TREE_MAX_FILES:  # no model folder is that large: not hashed, and it says so
        return f"tree:over {TREE_MAX_FILES} files"
    parts = [f"{p.relative_to(path)}={_signature(p)}" for p in files]
    return "tree:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def file_signature(path: Path) -> str:
    """A content hash for regular files, size+mtime for huge ones, a hash of the hashes for a folder;
    'missing' when absent. Nothing else is opened: a FIFO or a device (a link to /dev/zero) is named by
    its kind, so no read can block or go on for ever.

    Computed once per process for a file whose inode, size, mtime and ctime have not changed, and kept
    between commands in the workspace's SignatureCache (keep_signatures_in)."""
    try:
        return _signature(path)
    finally:
        if _cache is not None:
            _cache.save()


def _signature(path: Path) -> str:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as exc:  # a link loop, no permission
        return f"unreadable:{exc.errno}"
    if stat.S_ISDIR(st.st_mode):
        return _tree_signature(path)
    if not stat.S_ISREG(st.st_mode):
        return f"special:{stat.S_IFMT(st.st_mode):o}"
    if st.st_size > HASH_LIMIT:
        return f"stat:{st.st_size}:{st.st_mtime_ns}"
    key = _signature_key(path, st)
    if key not in _signatures:
        kept = _cache.get(key) if _cache is not None else None
        if kept is None:
            hashed_at = time.time_ns()
            kept = file_digest(path)
            if _cache is not None:
                _cache.put(key, kept, hashed_at)
        _signatures[key] = kept
    return _signatures[key]


def vouch_digest(path: Path, written: tuple[int, int, int] | None, content: str) -> None:
    """Take `content` ("sha256:...") as the signature of the file at `path` if it is still the file it was
    computed for: the same inode, size and mtime as when its writer closed it (`written`). A writer that
    hashed what it wrote spares reading it again (prepare-data's splits up to 64 MiB)."""
    if written is None:
        return
    try:
        now = path.stat()
    except OSError:
        return
    same = stat.S_ISREG(now.st_mode) and (now.st_ino, now.st_size, now.st_mtime_ns) == written
    if same and now.st_size <= HASH_LIMIT:  # a bigger file's signature is its size and mtime
        _signatures[_signature_key(path, now)] = content


def _signature_key(path: Path, st: os.stat_result) -> tuple[str, int, int, int, int]:
    return (str(path.absolute()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_digest(rec: dict[str, Any]) -> str:
    """What downstream stages remember of an upstream: its fingerprint and outputs."""
    return digest({"fingerprint": rec.get("fingerprint"), "outputs": rec.get("outputs")})


# --- the workspace lock ---------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` runs. A zombie does not: it has ended, and only waits for its parent (or,
    orphaned, for init) to collect its status; it writes nothing more. Found by killing prepare-data: its
    helper ended at once but stayed a zombie for a second, and the next run kept the helper's temp file."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    fields = proc_stat(pid)  # None: no /proc (macOS), or it has just gone: not known to be a zombie
    return fields is not None and fields[:1] in (["Z"], ["X"])


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from the state on (field 3), or None when there is no such pid."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_bytes()
    except (OSError, ValueError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces and parentheses itself.
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def lock_is_free(workspace: Path) -> bool:
    """Whether no ftctl holds the workspace lock now (`ftctl status` asks, without taking it)."""
    try:
        fd = os.open(workspace / LOCK_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return True  # no lock file: nobody ever locked this workspace (or it is not ftctl's)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock taken just now
    return True


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def describe_owner(owner: dict[str, Any]) -> str:
    """Who holds the lock, as its owner record says; a holder that wrote none (an ftctl in the instant
    after it took the lock, or another program) in words."""
    if not owner.get("pid"):
        return "a process that has not said which it is (an ftctl starting, or another program)"
    return (
        f"pid {owner.get('pid')} on {owner.get('host')}, `{owner.get('command')}`, "
        f"started {owner.get('started_at')}"
    )


class WorkspaceLock:
    """Exclusive lock on a workspace; use as a context manager."""

    def __init__(
        self,
        workspace: Path,
        command: str,
        timeout_s: float,
        notify: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
    ) -> None:
        self.path = workspace / LOCK_FILE
        self.command = command
        self.timeout_s = timeout_s
        self.notify = notify
        self._fd: int | None = None

    def read_owner(self) -> dict[str, Any] | None:
        try:
            text = read_text_nofollow(self.path)
            owner = json.loads(text) if text.strip() else None
        except (OSError, ValueError, StateError):
            return None
        return owner if isinstance(owner, dict) else None

    def _holder_or_none(self, fd: int, owner: dict[str, Any]) -> dict[str, Any] | None:
        """The holder's record, for the error once the wait is over; None when the lock got free
        meanwhile (then `fd` holds it). The holder writes its record right after taking the lock and
        empties it right before letting go: an empty record is waited on for a moment, trying the lock
        again, so the error names the holder instead of "pid None"."""
        named_by = time.monotonic() + 1.0
        while not owner and time.monotonic() < named_by:
            time.sleep(0.01)
            if _try_flock(fd):
                return None
            owner = self.read_owner() or {}
        return owner

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                _refuse_link(self.path)
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise UsageError(
                    f"cannot write to the workspace {self.path.parent} ({exc.strerror}): ftctl keeps its "
                    "lock and state there",
                    hint="use a writable folder (--workspace, FTCTL_WORKSPACE); `ftctl status` reads it",
                ) from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StateError(f"the lock file {self.path} is not a regular file", hint=f"remove {self.path}")
        deadline = time.monotonic() + self.timeout_s
        told = False
        while not _try_flock(fd):
            owner = self.read_owner() or {}
            if time.monotonic() >= deadline:
                named = self._holder_or_none(fd, owner)
                if named is None:  # it let go while we looked: the lock is ours
                    break
                os.close(fd)
                raise LockTimeout(
                    f"workspace {self.path.parent} is locked by another ftctl ({describe_owner(named)})",
                    hint="wait for it to finish, or wait longer with `--set lock_timeout_s=SECONDS`",
                ) from None
            if not told:
                held_by = describe_owner(owner)
                self.notify(f"waiting up to {self.timeout_s:g}s for the workspace lock held by {held_by}")
                told = True
            time.sleep(0.1)
        previous = self.read_owner()
        if previous and previous.get("pid") != os.getpid():
            self.notify(f"taking over the workspace lock left by a dead ftctl ({describe_owner(previous)})")
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started_at": now_iso(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WorkspaceLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(workspace: Path, command: str, timeout_s: float) -> Iterator[WorkspaceLock]:
    with WorkspaceLock(workspace, command, timeout_s) as lock:
        yield lock
