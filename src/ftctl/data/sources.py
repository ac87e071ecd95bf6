"""Where prepare-data reads a dataset from, and how: the kinds of source (the shipped sample, a hub-layout
folder, a folder of <split>.jsonl files, one file, a hub id), their splits, and readers that yield every
record with its 1-based line or row number (or why it cannot be read).

A file (.jsonl, .json, .csv or .parquet) is one split, named after the file; prepare-data divides it into
the train and test splits itself (ftctl.data.prepare).

`datasets` and pyarrow are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.constants import SAMPLE_DATASET
from ftctl.data.ultrachat import show
from ftctl.data.writer import os_reason, short_reason
from ftctl.errors import DataError, StageFailed

if TYPE_CHECKING:
    pass

SOURCE_SAMPLE = "sample"
SOURCE_HUB_LAYOUT = "hub-layout"
SOURCE_JSONL_DIR = "jsonl-dir"
SOURCE_HUB = "hub"
SOURCE_FILE = "file"
# The files a dataset may be, by suffix: JSON lines, JSON (an array of records, or JSON lines), CSV
# (a header row; list columns hold JSON text) and parquet.
FILE_TYPES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")

# owner/name or name, as the hub allows them.
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Split names become file names: <split>.jsonl.
SPLIT_NAME_RE = re.compile(r"^\w[\w.-]*$")


def sample_dataset_dir() -> Path:
    """The folder of the sample dataset shipped with ftctl (hub layout)."""
    from ftctl.data.sample import default_output_dir

    return default_output_dir()


def _hub_layout_files(folder: Path) -> list[Path]:
    data = folder / "data"
    return sorted(data.glob("*.parquet")) if data.is_dir() else []


_SHARD_RE = re.compile(r"^(?P<split>.+?)(-\d{5}-of-\d{5})?(-[0-9a-f]{8,})?$")


def hub_layout_splits(folder: Path) -> dict[str, list[Path]]:
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


def _counting(rows: Iterator[tuple[int, Any]], counted: Callable[[int], None]) -> Iterator[tuple[int, Any]]:
    handed = 0
    for row in rows:
        yield row
        handed += 1
        if handed == COUNT_EVERY:
            counted(handed)
            handed = 0
    counted(handed)


def parquet_rows(paths: Sequence[Path]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        try:
            total += pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: cannot read parquet ({short_reason(exc)})") from None
    return total


def _read_parquet(files: Sequence[Path], split_pc: float) -> Iterator[tuple[int, Any]]:
    """Stream rows from parquet files a row group at a time (memory stays flat).

    Whole row groups decode several times faster than small record batches of nested columns; a row
    group larger than ROW_GROUP_LIMIT is read in batches instead.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = parquet_rows(files)
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
            raise DataError(f"{path}: cannot read parquet ({short_reason(exc)})") from None


def _jsonl_files(folder: Path) -> list[Path]:
    """The <split>.jsonl files of a folder; hidden ones (._train.jsonl left by macOS...) are not splits."""
    return sorted(p for p in folder.glob("*.jsonl") if p.is_file() and not p.name.startswith("."))


def _looks_like_path(dataset: str) -> bool:
    """True for names that cannot be hub ids (./x, ~/x, a/b/c, x.jsonl...): a missing local path."""
    return (
        not _HUB_ID_RE.match(dataset)
        or dataset.startswith((".", "~"))
        or dataset.lower().endswith(FILE_TYPES)
    )


def source_kind(dataset: str) -> str:
    """Which kind of source `dataset` names: "sample", "hub-layout", "jsonl-dir", "file" or "hub".

    Raises DataError for a local path that does not exist or holds no dataset.
    """
    if dataset == SAMPLE_DATASET:
        return SOURCE_SAMPLE
    if not dataset or not dataset.strip():
        raise DataError("no dataset given", hint=f"name a hub dataset, a local folder or {SAMPLE_DATASET}")
    path = Path(dataset).expanduser()
    if path.exists():
        if not path.is_dir() and not path.is_file():  # a FIFO would block the read, /dev/zero never end
            raise DataError(
                f"{path}: is not a regular file (a FIFO, a device or a socket)",
                hint="give a data file, or a folder of <split>.jsonl files or of a hub-layout data/ folder",
            )
        if not path.is_dir():
            if path.suffix.lower() in FILE_TYPES:
                return SOURCE_FILE
            raise DataError(
                f"{path}: is a file that is not .jsonl, .json, .csv or .parquet, and not a dataset folder",
                hint="give a data file with one of those names, or the folder holding <split>.jsonl files "
                "or a hub-layout data/ folder",
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
        what = "file" if dataset.lower().endswith(FILE_TYPES) else "folder"
        raise DataError(
            f"{dataset}: no such {what}",
            hint="give an existing data file or folder, a Hugging Face hub id (owner/name) or "
            + SAMPLE_DATASET,
        )
    return SOURCE_HUB


# --------------------------------------------------------------------------------------------------
# Readers: each yields (1-based line or row number, record) or (number, Bad(reason))
# --------------------------------------------------------------------------------------------------


@dataclass
class Bad:
    reason: str


def _take_count(total: int, split_pc: float) -> int:
    """How many of `total` rows `[0%:pc%]` selects: the same closest rounding as `datasets`."""
    return int(round(split_pc * total / 100.0))


MAX_LINE_BYTES = 64 * 1024 * 1024  # a longer line is dropped unread (records of ultrachat are ~10 KB)
_BOM = b"\xef\xbb\xbf"


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes | Bad]]:
    """(line number, raw line) for every non-blank line; (line number, Bad) for an overlong one.

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
                    yield number, Bad(f"line longer than {limit} bytes ({size} bytes)")
                    continue
                if raw.startswith(_BOM):
                    raw = raw[3:]
                if raw.strip():
                    yield number, raw
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({os_reason(exc)})") from None


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
    """The record on a line, or Bad(reason)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Bad(f"not valid UTF-8: {exc.reason} at byte {exc.start}")
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        return Bad(f"invalid JSON: {exc.msg} (column {exc.colno})")
    except _NotStrict as exc:
        return Bad(str(exc))
    except RecursionError:
        return Bad("invalid JSON: nested too deeply")
    except ValueError as exc:  # int() of a number longer than sys.get_int_max_str_digits()
        if "digits" in str(exc):
            most = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
            return Bad(f"invalid JSON: a number has too many digits (over {most})")
        return Bad(f"invalid JSON: {short_reason(exc)}")


def _read_jsonl(path: Path, split_pc: float) -> Iterator[tuple[int, Any]]:
    limit: int | None = None
    if split_pc < 100:
        total = sum(1 for _ in _jsonl_lines(path))
        limit = _take_count(total, split_pc)
    for taken, (number, raw) in enumerate(_jsonl_lines(path)):
        if limit is not None and taken >= limit:
            break
        yield number, raw if isinstance(raw, Bad) else _parse_line(raw)


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


COUNT_EVERY = 256  # rows a Source hands out between two calls of its `counted`


class Source:
    """Split names and row readers for one dataset. `counted`, when set, hears how many rows `rows`
    has handed out, every COUNT_EVERY rows and at the end of a split (progress for a long read)."""

    def __init__(
        self, dataset: str, kind: str, subset: str | None, revision: str | None, engine: str = "arrow"
    ) -> None:
        self.dataset = dataset
        self.kind = kind
        self.engine = engine
        self.subset = subset
        self.revision = revision
        self.counted: Callable[[int], None] | None = None
        if kind == SOURCE_SAMPLE:
            self.location = str(sample_dataset_dir())
        elif kind in (SOURCE_HUB_LAYOUT, SOURCE_JSONL_DIR, SOURCE_FILE):
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

    def _fail(self, exc: Exception, what: str) -> DataError | StageFailed:
        if self.kind == SOURCE_HUB:
            what += f"; there is no local folder {self.dataset} either"
            offline = isinstance(exc, (ConnectionError, OSError, TimeoutError)) or any(
                word in str(exc) for word in ("Couldn't reach", "offline", "Offline", "resolve")
            )
            if offline:  # the machine's network, not the input: a runtime failure (exit 1)
                return StageFailed(
                    f"cannot load {self.dataset} from the Hugging Face hub ({what}): the hub is "
                    f"unreachable or the dataset does not exist ({short_reason(exc)})",
                    hint=f"without network access use a local folder (<split>.jsonl files or a "
                    f"downloaded hub repo) or the shipped sample, {SAMPLE_DATASET}",
                )
            return DataError(
                f"cannot load {self.dataset} from the Hugging Face hub ({what}): {short_reason(exc)}",
                hint="check the dataset id, data.subset and revision",
            )
        return DataError(f"{self.location}: cannot load the dataset ({what}): {short_reason(exc)}")

    def where(self, split: str) -> str:
        """What a dropped record's line number counts in: `<where>:<line>`."""
        if self.kind == SOURCE_FILE:
            return self.dataset
        return f"{split}.jsonl" if self.kind == SOURCE_JSONL_DIR else split

    def split_names(self) -> list[str]:
        if self.kind == SOURCE_FILE:
            return [Path(self.location).stem]
        if self.kind == SOURCE_JSONL_DIR:
            return [p.stem for p in _jsonl_files(Path(self.location))]
        if self.kind in (SOURCE_SAMPLE, SOURCE_HUB_LAYOUT) and self.engine == "arrow":
            return list(hub_layout_splits(Path(self.location)))
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
        rows = self._rows(split, split_pc)
        return rows if self.counted is None else _counting(rows, self.counted)

    def _rows(self, split: str, split_pc: float) -> Iterator[tuple[int, Any]]:
        if self.kind == SOURCE_FILE:
            yield from read_file(Path(self.location), split_pc)
            return
        if self.kind == SOURCE_JSONL_DIR:
            yield from _read_jsonl(Path(self.location) / f"{split}.jsonl", split_pc)
            return
        if self.kind in (SOURCE_SAMPLE, SOURCE_HUB_LAYOUT) and self.engine == "arrow":
            yield from _read_parquet(hub_layout_splits(Path(self.location))[split], split_pc)
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
# One file: .jsonl, .json, .csv or .parquet
# --------------------------------------------------------------------------------------------------


def read_file(path: Path, split_pc: float) -> Iterator[tuple[int, Any]]:
    """(line, record) for every record of a data file ((row, record) for parquet)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet([path], split_pc)
    elif suffix == ".csv":
        yield from _take(_read_csv(path), split_pc)
    elif suffix == ".json" and _starts_with(path, b"["):
        yield from _take(_read_json_array(path), split_pc)
    else:  # .jsonl, .ndjson, and .json files written as JSON lines
        yield from _read_jsonl(path, split_pc)


def _take(rows: Iterable[tuple[int, Any]], split_pc: float) -> Iterator[tuple[int, Any]]:
    """The first `split_pc` percent of `rows` (held in memory only when fewer than all are taken)."""
    if split_pc >= 100:
        yield from rows
        return
    found = list(rows)
    yield from found[: _take_count(len(found), split_pc)]


def _starts_with(path: Path, text: bytes) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({os_reason(exc)})") from None
    return head.removeprefix(_BOM).lstrip().startswith(text)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({os_reason(exc)})") from None
    try:
        return data.removeprefix(_BOM).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({exc.reason})") from None


def _read_json_array(path: Path) -> Iterator[tuple[int, Any]]:
    """(line where it starts, record) for every element of a JSON array. A file that is not one
    well-formed array is refused whole (DataError naming the line): past a syntax error nothing can be
    read reliably."""
    text = _read_text(path)
    counted, line = 0, 1  # text[:counted] holds line - 1 newlines

    def line_at(at: int) -> int:
        nonlocal counted, line
        line += text.count("\n", counted, at)
        counted = at
        return line

    def fail(at: int, why: str) -> DataError:
        return DataError(f"{path}:{text.count(chr(10), 0, at) + 1}: invalid JSON: {why}")

    def skip(at: int) -> int:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    pos = skip(text.index("[") + 1)
    closed = pos < len(text) and text[pos] == "]"
    pos += closed
    while not closed:
        start = pos
        try:
            record, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, f"{exc.msg} (column {exc.colno})") from None
        except _NotStrict as exc:
            raise fail(start, str(exc)) from None
        except RecursionError:
            raise fail(start, "nested too deeply") from None
        yield line_at(start), record
        pos = skip(pos)
        after = text[pos : pos + 1]
        if not after:
            raise fail(pos, "the array is not closed (no ']' at the end)")
        if after not in (",", "]"):
            raise fail(pos, "expected ',' or ']' after an element of the array")
        closed = after == "]"
        pos = pos + 1 if closed else skip(pos + 1)
    if text[pos:].strip():
        raise fail(skip(pos), "more text after the array")


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    """(line where the row starts, {column: cell}) for every row of a CSV file with a header row; a row
    with more or fewer cells than the header is Bad. A file the csv module cannot parse (a NUL byte, an
    unclosed quote at the end) is refused whole, naming the line."""
    import csv

    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({os_reason(exc)})") from None

    def text_lines() -> Iterator[str]:  # decoded line by line: a bad byte is named by its line
        for number, raw in enumerate(handle, 1):
            try:
                yield (raw[3:] if number == 1 and raw.startswith(_BOM) else raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid UTF-8 ({exc.reason})") from None

    with handle:
        reader = csv.reader(text_lines(), strict=True)
        line = 0
        try:
            header: list[str] | None = None
            for cells in reader:
                start, line = line + 1, reader.line_num
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # a blank line
                if header is None:
                    header = [cell.strip() for cell in cells]
                    duplicated = sorted({c for c in header if header.count(c) > 1})
                    if duplicated:
                        raise DataError(f"{path}:{start}: the header names {show(duplicated[0])} twice")
                    continue
                if len(cells) != len(header):
                    yield start, Bad(f"{len(cells)} cells, but the header has {len(header)} columns")
                    continue
                yield start, dict(zip(header, cells, strict=True))
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not readable as CSV ({exc})") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read it ({os_reason(exc)})") from None
