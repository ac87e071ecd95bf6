"""Download (or copy) a chat dataset into `<download_dir>/<split>.jsonl` files, validating every record.

This is the notebook's download-dataset.py step: for every split of the dataset, take the first
`split_pc` percent of its rows and write them as JSON lines. Sources:

- ``ftctl:ultrachat-sample``: the sample shipped with ftctl (a hub-layout folder, see ftctl.data.sample);
- a local folder laid out like a hub dataset repo (``data/<split>-*.parquet``), loaded through
  ``datasets.load_dataset`` exactly as a hub dataset would be;
- a local folder of ``<split>.jsonl`` files, read line by line so bad lines are reported by number;
- a Hugging Face hub id such as ``HuggingFaceH4/ultrachat_200k``.

Invalid records are dropped and reported (see ftctl.data.ultrachat.check_record), each with its line
and reason; so are JSON lines that are not strict JSON (duplicate keys, NaN) and overlong lines. Output
files are written to temporary files first (O_EXCL|O_NOFOLLOW) and moved into place only once every split
succeeded; an output path that is a symlink is replaced, never written through. An interrupt (SIGINT) that
arrives while the files are moved into place waits until all of them are.

`datasets` and pyarrow are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ftctl.constants import SAMPLE_DATASET as SAMPLE_DATASET
from ftctl.data.ultrachat import check_record, show
from ftctl.errors import DataError

if TYPE_CHECKING:
    from concurrent.futures import Future

SOURCE_SAMPLE = "sample"
SOURCE_HUB_LAYOUT = "hub-layout"
SOURCE_JSONL_DIR = "jsonl-dir"
SOURCE_HUB = "hub"

# owner/name or name, as the hub allows them.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Split names become file names: <split>.jsonl.
_SPLIT_NAME_RE = re.compile(r"^\w[\w.-]*$")


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


@dataclass
class PrepareReport:
    dataset: str
    source_kind: str  # "sample" | "hub-layout" | "jsonl-dir" | "hub"
    splits: list[SplitReport] = field(default_factory=list)

    def split(self, name: str) -> SplitReport:
        for report in self.splits:
            if report.name == name:
                return report
        raise KeyError(name)


def sample_dataset_dir() -> Path:
    """The folder of the sample dataset shipped with ftctl (hub layout)."""
    from ftctl.data.sample import default_output_dir

    return default_output_dir()


def _hub_layout_files(folder: Path) -> list[Path]:
    data = folder / "data"
    return sorted(data.glob("*.parquet")) if data.is_dir() else []


_SHARD_RE = re.compile(r"^(?P<split>.+?)(-\d{5}-of-\d{5})?(-[0-9a-f]{8,})?$")


def _hub_layout_splits(folder: Path) -> dict[str, list[Path]]:
    """Split name -> parquet files of a folder laid out like a hub dataset repo.

    The order and the file patterns come from the dataset card's `configs` (as the hub reads them),
    else from the file names (data/<split>-00000-of-00001.parquet).
    """
    card = folder / "README.md"
    found: dict[str, list[Path]] = {}
    if card.is_file():
        text = card.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            import yaml

            try:
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
            except yaml.YAMLError:
                front = {}
            configs = front.get("configs") if isinstance(front, dict) else None
            default = next(
                (c for c in configs or [] if isinstance(c, dict) and c.get("config_name") == "default"), None
            )
            for entry in (default or {}).get("data_files") or []:
                if isinstance(entry, dict) and entry.get("split") and entry.get("path"):
                    patterns = entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
                    files = sorted({f for pattern in patterns for f in folder.glob(str(pattern))})
                    found[str(entry["split"])] = [f for f in files if f.suffix == ".parquet"]
    if not found:
        for path in _hub_layout_files(folder):
            match = _SHARD_RE.match(path.stem)
            found.setdefault(match.group("split") if match else path.stem, []).append(path)
    return {split: files for split, files in found.items() if files}


ROW_GROUP_LIMIT = 256 * 1024 * 1024  # bigger row groups are read in batches to bound memory


def _parquet_rows(paths: Sequence[Path]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: cannot read parquet ({_short(exc)})") from None
    return total


def _read_parquet(files: Sequence[Path], split_pc: float) -> Iterator[tuple[int, Any]]:
    """Stream rows from parquet files a row group at a time (memory stays flat).

    Whole row groups decode several times faster than small record batches of nested columns; a row
    group larger than ROW_GROUP_LIMIT is read in batches instead.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = _parquet_rows(files)
    limit = total if split_pc >= 100 else _take_count(total, split_pc)
    number = 0
    for path in files:
        if number >= limit:
            return
        try:
            handle = pq.ParquetFile(path)
            meta = handle.metadata
            if all(meta.row_group(i).total_byte_size <= ROW_GROUP_LIMIT for i in range(meta.num_row_groups)):
                chunks: Iterable[Any] = (handle.read_row_group(i) for i in range(meta.num_row_groups))
            else:
                chunks = handle.iter_batches(batch_size=4096)
            for chunk in chunks:
                for row in chunk.slice(0, limit - number).to_pylist():
                    number += 1
                    yield number, row
                if number >= limit:
                    return
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: cannot read parquet ({_short(exc)})") from None


def _jsonl_files(folder: Path) -> list[Path]:
    """The <split>.jsonl files of a folder; hidden ones (._train.jsonl left by macOS...) are not splits."""
    return sorted(p for p in folder.glob("*.jsonl") if p.is_file() and not p.name.startswith("."))


def _looks_like_path(dataset: str) -> bool:
    """True for names that cannot be hub ids (./x, ~/x, a/b/c, x.jsonl...): a missing local path."""
    return (
        not _HUB_ID_RE.match(dataset)
        or dataset.startswith((".", "~"))
        or dataset.endswith((".jsonl", ".json", ".parquet", ".csv"))
    )


def source_kind(dataset: str) -> str:
    """Which kind of source `dataset` names: "sample", "hub-layout", "jsonl-dir" or "hub".

    Raises DataError for a local path that does not exist or holds no dataset.
    """
    if dataset == SAMPLE_DATASET:
        return SOURCE_SAMPLE
    if not dataset or not dataset.strip():
        raise DataError("no dataset given", hint=f"name a hub dataset, a local folder or {SAMPLE_DATASET}")
    path = Path(dataset).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DataError(
                f"{path}: is a file, not a dataset folder",
                hint="point at the folder holding <split>.jsonl files or a hub-layout data/ folder",
            )
        if _hub_layout_files(path):
            return SOURCE_HUB_LAYOUT
        if _jsonl_files(path):
            return SOURCE_JSONL_DIR
        raise DataError(
            f"{path}: no dataset found there (expected <split>.jsonl files, or data/<split>-*.parquet "
            "as in a Hugging Face dataset repo)",
            hint=f"use {SAMPLE_DATASET} for the shipped sample",
        )
    if dataset.startswith("ftctl:"):
        raise DataError(f"unknown built-in dataset {dataset!r}", hint=f"the built-in one is {SAMPLE_DATASET}")
    if _looks_like_path(dataset):
        raise DataError(
            f"{dataset}: no such folder",
            hint="give an existing local folder, a Hugging Face hub id (owner/name) or " + SAMPLE_DATASET,
        )
    return SOURCE_HUB


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


# A temp file is always a new file: never one that exists, never through a symlink.
_TEMP_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
)


def _os_reason(exc: OSError) -> str:
    return exc.strerror or _short(exc)


class _SplitWriter:
    """Writes one split's valid records to a temp file in download_dir, hashing as it goes."""

    def __init__(self, download_dir: Path, split: str) -> None:
        self.split = split
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
                self._fh.close()
            except OSError as exc:
                raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> DataError:
        return DataError(
            f"{self.target.parent}: cannot write {self.target.name} there ({_os_reason(exc)})",
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


# --------------------------------------------------------------------------------------------------
# Readers: each yields (1-based line or row number, record) or (number, _Bad(reason))
# --------------------------------------------------------------------------------------------------


@dataclass
class _Bad:
    reason: str


def _take_count(total: int, split_pc: float) -> int:
    """How many of `total` rows `[0%:pc%]` selects: the same closest rounding as `datasets`."""
    return int(round(split_pc * total / 100.0))


MAX_LINE_BYTES = 64 * 1024 * 1024  # a longer line is dropped unread (records of ultrachat are ~10 KB)
_BOM = b"\xef\xbb\xbf"


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes | _Bad]]:
    """(line number, raw line) for every non-blank line; (line number, _Bad) for an overlong one.

    A line is read at most MAX_LINE_BYTES at a time (memory stays bounded whatever the file holds). A
    UTF-8 byte order mark is dropped from the start of any line (files with one, concatenated)."""
    limit = MAX_LINE_BYTES
    try:
        with path.open("rb") as fh:
            number = 0
            while raw := fh.readline(limit + 1):
                number += 1
                if len(raw) > limit and not raw.endswith(b"\n"):
                    size = len(raw)
                    while raw and not raw.endswith(b"\n"):  # skip the rest of it
                        raw = fh.readline(1 << 20)
                        size += len(raw)
                    size -= raw.endswith(b"\n")
                    yield number, _Bad(f"line longer than {limit} bytes ({size} bytes)")
                    continue
                if raw.startswith(_BOM):
                    raw = raw[3:]
                if raw.strip():
                    yield number, raw
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({_os_reason(exc)})") from None


class _NotStrict(ValueError):
    """Valid for Python's json module, but not strict JSON: duplicate keys, NaN, Infinity."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):  # which of the values is meant? Python keeps the last, others the first
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _NotStrict(f"duplicate key {show(key)} in an object")
            seen.add(key)
    return record


def _no_constant(name: str) -> Any:
    raise _NotStrict(f"invalid JSON: {name} is not a JSON value")


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _parse_line(raw: bytes) -> Any:
    """The record on a line, or _Bad(reason)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Bad(f"not valid UTF-8: {exc.reason} at byte {exc.start}")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return _Bad(f"invalid JSON: {exc.msg} (column {exc.colno})")
    except _NotStrict as exc:
        return _Bad(str(exc))
    except RecursionError:
        return _Bad("invalid JSON: nested too deeply")
    except ValueError as exc:  # int() of a number longer than sys.get_int_max_str_digits()
        if "digits" in str(exc):
            most = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
            return _Bad(f"invalid JSON: a number has too many digits (over {most})")
        return _Bad(f"invalid JSON: {_short(exc)}")


def _read_jsonl(path: Path, split_pc: float) -> Iterator[tuple[int, Any]]:
    limit: int | None = None
    if split_pc < 100:
        total = sum(1 for _ in _jsonl_lines(path))
        limit = _take_count(total, split_pc)
    for taken, (number, raw) in enumerate(_jsonl_lines(path)):
        if limit is not None and taken >= limit:
            break
        yield number, raw if isinstance(raw, _Bad) else _parse_line(raw)


def _split_spec(split: str, split_pc: float) -> Any:
    if split_pc >= 100:
        return split
    if float(split_pc).is_integer():
        return f"{split}[0%:{int(split_pc)}%]"
    import datasets

    return datasets.ReadInstruction(split, from_=0, to=split_pc, unit="%", rounding="closest")


def _iter_dataset_rows(ds: Any, batch_size: int = 1000) -> Iterator[tuple[int, Any]]:
    number = 0
    for batch in ds.iter(batch_size=batch_size):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            number += 1
            yield number, dict(zip(columns, values, strict=True))


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars from `datasets` while we work (ftctl prints its own progress lines)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    if was_enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Source:
    """Split names and row readers for one dataset."""

    def __init__(
        self, dataset: str, kind: str, subset: str | None, revision: str | None, engine: str = "arrow"
    ) -> None:
        self.dataset = dataset
        self.kind = kind
        self.engine = engine
        self.subset = subset
        self.revision = revision
        if kind == SOURCE_SAMPLE:
            self.location = str(sample_dataset_dir())
        elif kind in (SOURCE_HUB_LAYOUT, SOURCE_JSONL_DIR):
            self.location = str(Path(dataset).expanduser())
        else:
            self.location = dataset
        if kind != SOURCE_HUB and subset not in (None, "", "default"):
            raise DataError(
                f"data.subset is {subset!r}, but {dataset} is a local dataset with a single (default) "
                "configuration",
                hint="leave data.subset unset for local folders and the sample",
            )

    def label(self) -> str:
        return self.dataset if self.kind != SOURCE_SAMPLE else f"{self.dataset} ({self.location})"

    def _fail(self, exc: Exception, what: str) -> DataError:
        if self.kind == SOURCE_HUB:
            what += f"; there is no local folder {self.dataset} either"
            offline = isinstance(exc, (ConnectionError, OSError, TimeoutError)) or any(
                word in str(exc) for word in ("Couldn't reach", "offline", "Offline", "resolve")
            )
            if offline:
                return DataError(
                    f"cannot load {self.dataset} from the Hugging Face hub ({what}): the hub is "
                    f"unreachable or the dataset does not exist ({_short(exc)})",
                    hint=f"without network access use a local folder (<split>.jsonl files or a "
                    f"downloaded hub repo) or the shipped sample, {SAMPLE_DATASET}",
                )
            return DataError(
                f"cannot load {self.dataset} from the Hugging Face hub ({what}): {_short(exc)}",
                hint="check the dataset id, data.subset and revision",
            )
        return DataError(f"{self.location}: cannot load the dataset ({what}): {_short(exc)}")

    def split_names(self) -> list[str]:
        if self.kind == SOURCE_JSONL_DIR:
            return [p.stem for p in _jsonl_files(Path(self.location))]
        if self.kind in (SOURCE_SAMPLE, SOURCE_HUB_LAYOUT) and self.engine == "arrow":
            return list(_hub_layout_splits(Path(self.location)))
        import datasets

        try:
            with _quiet_datasets():
                if self.kind == SOURCE_HUB:
                    names = datasets.get_dataset_split_names(
                        self.location, self.subset, revision=self.revision
                    )
                else:
                    names = datasets.get_dataset_split_names(self.location)
        except DataError:
            raise
        except Exception as exc:  # datasets raises many kinds (connection, not found, bad files)
            raise self._fail(exc, "listing splits") from None
        return [str(n) for n in names]

    def rows(self, split: str, split_pc: float) -> Iterator[tuple[int, Any]]:
        if self.kind == SOURCE_JSONL_DIR:
            yield from _read_jsonl(Path(self.location) / f"{split}.jsonl", split_pc)
            return
        if self.kind in (SOURCE_SAMPLE, SOURCE_HUB_LAYOUT) and self.engine == "arrow":
            yield from _read_parquet(_hub_layout_splits(Path(self.location))[split], split_pc)
            return
        import datasets

        spec = _split_spec(split, split_pc)
        try:
            with _quiet_datasets():
                if self.kind == SOURCE_HUB:
                    ds = datasets.load_dataset(self.location, self.subset, split=spec, revision=self.revision)
                else:
                    ds = datasets.load_dataset(self.location, split=spec)
        except DataError:
            raise
        except ValueError as exc:
            if "corresponds to no data" in str(exc):
                return  # split_pc selects no row of a small split: like the jsonl reader, zero rows
            raise self._fail(exc, f"split {split}") from None
        except Exception as exc:
            raise self._fail(exc, f"split {split}") from None
        yield from _iter_dataset_rows(ds)


# --------------------------------------------------------------------------------------------------
# prepare()
# --------------------------------------------------------------------------------------------------


def _check_split_pc(split_pc: float) -> float:
    try:
        value = float(split_pc)
    except (TypeError, ValueError):
        raise DataError(f"data.split_pc must be a number in (0, 100], got {split_pc!r}") from None
    if not (0 < value <= 100):  # also false for NaN
        raise DataError(
            f"data.split_pc must be in (0, 100], got {split_pc!r}",
            hint="it is the percentage of each split to keep, e.g. 5 for the first 5%",
        )
    return value


@dataclass(frozen=True)
class PrepareOptions:
    """What prepare() takes from a dataset, and how it reads it.

    `subset`: the hub configuration (local datasets have only the default one). `split_pc`: the
    percentage of each split to keep (the first rows). `splits`: the splits to write (default: all).
    `train_split`: the split that must hold at least `min_train_rows` valid rows (and never none).
    `revision`: the hub revision. `engine`: local hub-layout folders (and the sample) are streamed with
    pyarrow ("arrow", the default: flat memory, several times faster), or loaded through
    `datasets.load_dataset` as a hub dataset is ("datasets"); hub ids always go through `datasets`.
    """

    subset: str | None = None
    split_pc: float = 100.0
    splits: Sequence[str] | None = None
    train_split: str = "train_sft"
    min_train_rows: int = 10
    revision: str | None = None
    engine: str = "arrow"


def _check_hub_reachable(dataset: str, say: Callable[[str], None]) -> None:
    """DataError, before any download starts, when the Hugging Face hub does not answer."""
    from ftctl.hub import unreachable_reason

    say(f"loading {dataset} from the Hugging Face hub...")
    why = unreachable_reason()
    if why:
        raise DataError(
            f"data.dataset: {dataset} is not a local folder, and the Hugging Face hub is unreachable: {why}",
            hint="use a local folder (<split>.jsonl files or a downloaded hub repo) or the shipped "
            f"sample, {SAMPLE_DATASET}",
        ) from None


def _wanted_splits(source: _Source, splits: Sequence[str] | None, train_split: str) -> list[str]:
    """The splits to write (all those of `source` unless `splits` names some), checked: they exist, make
    file names, and include the train split."""
    available = source.split_names()
    if not available:
        raise DataError(f"{source.label()}: the dataset has no splits")
    if splits is not None:
        wanted = list(dict.fromkeys(splits))
        unknown = [s for s in wanted if s not in available]
        if unknown:
            raise DataError(
                f"{source.label()}: no split named {', '.join(unknown)}; splits found: {', '.join(available)}"
            )
    else:
        wanted = available
    for name in wanted:
        if not _SPLIT_NAME_RE.match(name):
            raise DataError(f"{source.label()}: split name {name!r} cannot be used as a file name")
    if train_split not in wanted:
        raise DataError(
            f"{source.label()}: the train split {train_split!r} is not among the splits "
            f"({', '.join(wanted)})",
            hint="set data.train_split to one of them" if wanted else None,
        )
    return wanted


def _make_download_dir(download_dir: Path, splits: Iterable[str]) -> bool:
    """Create the download folder if need be (True if it was created) and remove the temp files that
    killed writers left there."""
    created_dir = not download_dir.exists()
    try:
        download_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{download_dir}: cannot create the download folder ({_short(exc)})") from None
    _remove_stale_temp_files(download_dir, splits)
    return created_dir


def _check_train_rows(source: _Source, train: SplitReport, options: PrepareOptions) -> None:
    """DataError naming the dropped records when the train split has too few valid rows."""
    needed = max(options.min_train_rows, 1)
    if train.rows_written >= needed:
        return
    where = (
        str(Path(source.location) / f"{options.train_split}.jsonl")
        if source.kind == SOURCE_JSONL_DIR
        else f"{source.label()} split {options.train_split}"
    )
    # Name the dropped records (file:line and why) here too: the caller's warnings about them are never
    # printed when the stage fails.
    why = "".join(
        f"\n  {text}" for text in format_dropped(PrepareReport(source.dataset, source.kind, [train]), limit=5)
    )
    raise DataError(
        f"{where}: only {train.rows_written} valid training rows "
        f"({train.rows_read} read, {len(train.dropped)} dropped); at least {needed} needed" + why,
        hint="fix or replace the dropped records, or raise data.split_pc",
    )


def _discard(done: dict[str, tuple[SplitReport, Path]], created_dir: Path | None) -> None:
    """Delete the temp files written so far, and `created_dir` if it is still empty."""
    for _, tmp in done.values():
        with contextlib.suppress(OSError):
            tmp.unlink()
    if created_dir is not None:
        with contextlib.suppress(OSError):
            created_dir.rmdir()  # only if still empty


def prepare(
    dataset: str,
    download_dir: Path,
    options: PrepareOptions | None = None,
    *,
    progress: Callable[[str], None] | None = None,
) -> PrepareReport:
    """Write `<download_dir>/<split>.jsonl` for every split of `dataset` (or those `options` name).

    Takes the first `split_pc` percent of each split, drops invalid records (reported in the result),
    and replaces the output files only once all splits were read and the train split has at least
    `min_train_rows` valid rows (and never none); see PrepareOptions. Raises DataError for unusable
    input, or a download folder that cannot be written; nothing is written then. `progress` receives a
    line per split written.
    """
    opts = options or PrepareOptions()
    if opts.engine not in ("arrow", "datasets"):
        raise ValueError(f"engine must be arrow or datasets, not {opts.engine!r}")
    pc = _check_split_pc(opts.split_pc)
    kind = source_kind(dataset)
    source = _Source(dataset, kind, opts.subset, opts.revision, opts.engine)
    say = progress or (lambda _line: None)
    if kind == SOURCE_HUB:
        _check_hub_reachable(dataset, say)
    wanted = _wanted_splits(source, opts.splits, opts.train_split)

    download_dir = Path(download_dir)
    created_dir = _make_download_dir(download_dir, wanted)
    done: dict[str, tuple[SplitReport, Path]] = {}
    try:
        with contextlib.closing(_write_splits(source, wanted, pc, download_dir)) as written:
            for report, tmp in written:
                done[report.name] = (report, tmp)
                say(f"{report.name}: {report.rows_written} rows, {len(report.dropped)} dropped")
        _check_train_rows(source, done[opts.train_split][0], opts)
        _commit([done[split] for split in wanted])
    except BaseException:
        _discard(done, download_dir if created_dir else None)
        raise
    return PrepareReport(dataset=dataset, source_kind=kind, splits=[done[split][0] for split in wanted])


def _commit(files: Sequence[tuple[SplitReport, Path]]) -> None:
    """Move every temp file onto its <split>.jsonl. os.replace replaces a symlink there (never writes
    through it); a folder there fails the whole run before anything moved. SIGINT/SIGTERM (when Python
    handles them) wait until every file is in place: a run's files are committed all or none."""
    for report, _ in files:
        if report.path.is_dir() and not report.path.is_symlink():
            raise DataError(
                f"{report.path}: is a folder, so the {report.name} split cannot be written there",
                hint="move that folder away, or set data.download_dir to another folder",
            )
    with _signals_deferred():
        for report, tmp in files:
            try:
                os.replace(tmp, report.path)
            except OSError as exc:
                raise DataError(f"{report.path}: cannot replace it ({_os_reason(exc)})") from None


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM (those Python handles) until the block is done, then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers run in the main thread only, and only it can change them
        return
    caught: list[tuple[int, Any]] = []
    previous: dict[int, Any] = {}
    for signum in (int(signal.SIGINT), int(signal.SIGTERM)):
        handler = signal.getsignal(signum)
        if callable(handler):  # default_int_handler (KeyboardInterrupt) or the application's own
            previous[signum] = handler
            signal.signal(signum, lambda number, frame: caught.append((number, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for number, frame in caught[:1]:
            previous[number](number, frame)


PARALLEL_MIN_ROWS = 100_000  # below this, starting worker processes costs more than it saves


def _write_one(source: _Source, split: str, pc: float, download_dir: Path) -> tuple[SplitReport, Path]:
    """Read, validate and write one split to a temp file; (its report, the temp file)."""
    writer = _SplitWriter(download_dir, split)
    try:
        _fill(writer, source.rows(split, pc))
        writer.close()
    except BaseException:
        writer.discard()
        raise
    return writer.report(), writer.tmp


def _write_one_in_worker(
    args: tuple[str, str, str | None, str | None, str, str, float, str],
) -> tuple[SplitReport, Path]:
    dataset, kind, subset, revision, engine, split, pc, download_dir = args
    return _write_one(_Source(dataset, kind, subset, revision, engine), split, pc, Path(download_dir))


def _write_splits(
    source: _Source, splits: Sequence[str], pc: float, download_dir: Path
) -> Generator[tuple[SplitReport, Path], None, None]:
    """Write every split; large parquet datasets use one process per core, biggest split first."""
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, len(splits))
    sizes: dict[str, int] = {}
    if workers > 1 and source.engine == "arrow" and source.kind in (SOURCE_SAMPLE, SOURCE_HUB_LAYOUT):
        files = _hub_layout_splits(Path(source.location))
        sizes = {split: _parquet_rows(files[split]) for split in splits}
    if sum(sizes.values()) < PARALLEL_MIN_ROWS:
        for split in splits:
            yield _write_one(source, split, pc, download_dir)
        return

    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    order = sorted(splits, key=lambda s: -sizes[s])
    args = [
        (source.dataset, source.kind, source.subset, source.revision, source.engine, s, pc, str(download_dir))
        for s in order
    ]
    # spawn, not fork: the caller may hold threads (MLflow, torch) that a fork would copy mid-state.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    futures: list[Future[tuple[SplitReport, Path]]] = []
    try:
        futures = [pool.submit(_write_one_in_worker, a) for a in args]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in finished if f.exception() is not None), None)
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
        results = {f.result()[0].name: f.result() for f in futures}
    except BaseException:  # a split failed, or KeyboardInterrupt: stop the others, delete what they wrote
        _abandon(pool, futures, download_dir, splits)
        raise
    pool.shutdown()
    remaining = [results[split] for split in splits]
    try:
        while remaining:
            yield remaining.pop(0)
    finally:  # closed early (the caller failed or was interrupted): the temp files not handed over go
        for _, tmp in remaining:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _abandon(
    pool: Any, futures: Sequence[Future[tuple[SplitReport, Path]]], download_dir: Path, splits: Iterable[str]
) -> None:
    for future in futures:
        future.cancel()
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            process.terminate()  # a worker still writing dies; its temp file is removed below
    pool.shutdown(wait=True, cancel_futures=True)
    for future in futures:  # splits that finished anyway leave temp files behind
        if future.done() and not future.cancelled() and future.exception() is None:
            with contextlib.suppress(OSError):
                future.result()[1].unlink()
    _remove_stale_temp_files(download_dir, splits)  # those of the terminated workers (dead pids now)


_TEMP_RE = re.compile(r"^\.(?P<split>.+)\.jsonl\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")


def _remove_stale_temp_files(download_dir: Path, splits: Iterable[str]) -> None:
    """Delete the half-written `.<split>.jsonl.<pid>.<hex>.tmp` files of writers that died (a killed
    prepare-data); those of a live process (another writer into the same folder) are left alone."""
    from ftctl.state import pid_alive

    wanted = set(splits)
    for path in download_dir.glob(".*.tmp"):
        found = _TEMP_RE.match(path.name)
        if found and found["split"] in wanted and not pid_alive(int(found["pid"])):
            with contextlib.suppress(OSError):
                path.unlink()


def _fill(writer: _SplitWriter, rows: Iterable[tuple[int, Any]]) -> None:
    for number, record in rows:
        if isinstance(record, _Bad):
            writer.drop(number, record.reason)
        else:
            writer.add(number, record)


def format_dropped(report: PrepareReport, limit: int = 10) -> list[str]:
    """Lines like `train_sft.jsonl:17: fewer than 2 messages (1)`, at most `limit`, then "... and N more"."""
    lines: list[str] = []
    total = 0
    for split in report.splits:
        where = f"{split.name}.jsonl" if report.source_kind == SOURCE_JSONL_DIR else split.name
        for dropped in split.dropped:
            total += 1
            if len(lines) < limit:
                lines.append(f"{where}:{dropped.line}: {dropped.reason}")
    if total > len(lines):
        lines.append(f"... and {total - len(lines)} more")
    return lines
