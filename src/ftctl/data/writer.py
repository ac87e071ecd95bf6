"""Writing one split: every record validated (ftctl.data.ultrachat.check_record), the valid ones written
as JSON lines to a new temporary file (O_EXCL|O_NOFOLLOW: never one that exists, never through a
symlink), the dropped ones reported with their line and reason.

With `hashing`, every written record's digest is kept: exact duplicates (the same record, byte for byte
as written) are found, and dropped with `dedupe`; `exclude` holds another split's digests (the train
split's, when this is the test split): a record found there is overlap, dropped with `dedupe` too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ftctl.data.ultrachat import check_record, has_weight_0
from ftctl.errors import DataError

if TYPE_CHECKING:
    pass


def os_reason(exc: OSError) -> str:
    return exc.strerror or short_reason(exc)


def short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class Dropped:
    """A record left out: `line` is the 1-based line in the source .jsonl, or row in the split."""

    line: int
    reason: str


@dataclass
class SplitReport:
    name: str
    path: Path
    rows_read: int
    rows_written: int
    dropped: list[Dropped]
    sha256: str
    bytes: int
    where: str = ""  # what the line numbers count in: `<where>:<line>` (a file, <split>.jsonl, a split)
    format: str | None = None  # the format the records were read as (ftctl.data.formats)
    detected_at: int | None = None  # the line the format was detected from (None: forced, or not found)
    # (inode, size, mtime in ns) of the temp file as its writer closed it: `sha256` is that file's hash
    written: tuple[int, int, int] | None = None
    duplicates: list[tuple[int, int]] = field(default_factory=list)  # (line, line of its first copy)
    overlap: list[tuple[int, int]] = field(default_factory=list)  # (line, line of the train record)
    refused: list[Dropped] = field(default_factory=list)  # weight 0 where the backend cannot honour it


# A temp file is always a new file: never one that exists, never through a symlink.
_TEMP_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)


class SplitWriter:
    """Writes one split's valid records to a temp file in download_dir, hashing as it goes."""

    def __init__(
        self,
        download_dir: Path,
        split: str,
        *,
        hashing: bool = False,
        dedupe: bool = False,
        exclude: Mapping[bytes, int] | None = None,
        weights: bool = True,
    ) -> None:
        self.split = split
        self.hashing = hashing
        self.dedupe = dedupe
        self.exclude = exclude or {}
        self.weights = weights  # False: a record with weight 0 is refused (the backend trains on it all)
        self.digests: dict[bytes, int] = {}  # digest -> line of the first record written with it
        # Set to lists to keep the digest and line of every record written (in order).
        self.order: list[bytes] | None = None
        self.lines: list[int] | None = None
        self.duplicates: list[tuple[int, int]] = []
        self.overlap: list[tuple[int, int]] = []
        self.refused: list[Dropped] = []
        self.format: str | None = None
        self.detected_at: int | None = None
        self.target = download_dir / f"{split}.jsonl"
        # Not tempfile.mkstemp: its files are 0600; these get the usual umask-based mode.
        for _ in range(100):
            self.tmp = download_dir / f".{split}.jsonl.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:
                fd = os.open(self.tmp, _TEMP_FLAGS, 0o666)
                break
            except FileExistsError:  # taken (by a file or a symlink, which is not followed): another name
                continue
            except OSError as exc:
                raise self._failed(exc) from None
        else:
            raise DataError(f"{download_dir}: cannot create a temp file there (every name tried exists)")
        self._fh: IO[bytes] = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._pending: list[bytes] = []  # lines not yet written: written and hashed ~1 MiB at a time
        self._pending_bytes = 0
        self.bytes = 0
        self.written: tuple[int, int, int] | None = None
        self.rows_read = 0
        self.rows_written = 0
        self.dropped: list[Dropped] = []

    def add(self, number: int, record: Any) -> None:
        self.rows_read += 1
        reason = check_record(record)
        if reason is not None:
            self.dropped.append(Dropped(number, reason))
            return
        try:
            data = _dumps(record)
        except RecursionError:
            self.dropped.append(Dropped(number, "cannot be written as JSON: nested too deeply"))
            return
        except (TypeError, ValueError) as exc:
            self.dropped.append(Dropped(number, _unwritable(exc)))
            return
        if not self.weights and has_weight_0(record):
            self.refused.append(Dropped(number, "an assistant message has weight 0"))
        if self.hashing and not self._admit(number, data):
            return
        self._append(data)

    def _admit(self, number: int, data: bytes) -> bool:
        """Record the digest of `data`; False when it is to be dropped (a duplicate, or in `exclude`,
        with dedupe)."""
        digest = hashlib.blake2b(data, digest_size=16).digest()
        first = self.digests.get(digest)
        if first is not None:
            self.duplicates.append((number, first))
            if self.dedupe:
                self.dropped.append(Dropped(number, f"exact duplicate of line {first} (data.dedupe)"))
                return False
        else:
            self.digests[digest] = number
        other = self.exclude.get(digest)
        if other is not None:
            self.overlap.append((number, other))
            if self.dedupe:
                self.dropped.append(Dropped(number, f"also in the train split (line {other}; data.dedupe)"))
                return False
        if self.order is not None and self.lines is not None:
            self.order.append(digest)
            self.lines.append(number)
        return True

    def add_written(self, data: bytes) -> None:
        """Append a line another writer validated (a split of its records)."""
        self.rows_read += 1
        self._append(data)

    def _append(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        self.bytes += len(data)
        if self._pending_bytes >= 1 << 20:
            self._flush()
        self.rows_written += 1

    def drop(self, number: int, reason: str) -> None:
        self.rows_read += 1
        self.dropped.append(Dropped(number, reason))

    def _flush(self) -> None:
        chunk = b"".join(self._pending)
        try:
            self._fh.write(chunk)
        except OSError as exc:
            raise self._failed(exc) from None
        self._hash.update(chunk)
        self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        if not self._fh.closed:
            self._flush()
            try:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                done = os.fstat(self._fh.fileno())
                self._fh.close()
            except OSError as exc:
                raise self._failed(exc) from None
            self.written = (done.st_ino, done.st_size, done.st_mtime_ns)

    def _failed(self, exc: OSError) -> DataError:
        return DataError(
            f"{self.target.parent}: cannot write {self.target.name} there ({os_reason(exc)})",
            hint="check the free space and the permissions of the download folder (data.download_dir)",
        )

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()

    def report(self) -> SplitReport:
        return SplitReport(
            name=self.split,
            path=self.target,
            rows_read=self.rows_read,
            rows_written=self.rows_written,
            dropped=self.dropped,
            sha256=self._hash.hexdigest(),
            bytes=self.bytes,
            format=self.format,
            detected_at=self.detected_at,
            duplicates=self.duplicates,
            overlap=self.overlap,
            refused=self.refused,
            written=self.written,
        )


def _dumps(record: Any) -> bytes:
    """One JSON line (UTF-8, compact). orjson when installed: several times faster than json."""
    try:
        import orjson
    except ImportError:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=_json_default)
        return (text + "\n").encode("utf-8")
    try:
        return orjson.dumps(record, default=_json_default, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError as exc:
        raise ValueError(str(exc)) from None


def _unwritable(exc: Exception) -> str:
    text = str(exc)
    if "surrogates" in text:
        return "text with a lone surrogate (an unpaired \\ud800-\\udfff escape) is not valid Unicode"
    if "Recursion limit" in text:
        return "cannot be written as JSON: nested too deeply"
    return f"cannot be written as JSON: {text}"


def _json_default(value: Any) -> Any:
    # Columns from parquet/arrow may hold dates, decimals or bytes: keep them, as text.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
