"""Download (or copy) a chat dataset into `<download_dir>/<split>.jsonl` files, validating every record.

This is the notebook's download-dataset.py step: for every split of the dataset, take the first
`split_pc` percent of its rows and write them as JSON lines. Sources:

- ``ftctl:ultrachat-sample``: the sample shipped with ftctl (a hub-layout folder, see ftctl.data.sample);
- a local folder laid out like a hub dataset repo (``data/<split>-*.parquet``), loaded through
  ``datasets.load_dataset`` exactly as a hub dataset would be;
- a local folder of ``<split>.jsonl`` files, read line by line so bad lines are reported by number;
- one file (.jsonl, .json, .csv or .parquet): one split, which prepare-data divides itself into the train
  and test splits (`test_pc` percent of its valid records, chosen with a seeded shuffle); so is a
  dataset with a single split not named like the train split (a hub dataset with only ``train``);
- a Hugging Face hub id such as ``HuggingFaceH4/ultrachat_200k``.

Records may be in any format of ftctl.data.formats (OpenAI chat, ShareGPT, Alpaca, prompt/completion),
detected per split from the first record that has one's columns (or forced with `format`), with
`columns` renaming the source's columns first; they are written in the ultrachat shape.

Exact duplicates, and test records also in the train split, are found and reported (dropped with
`dedupe`) for the user's own data: files, folders of JSON lines, converted formats, one-split datasets.
Hub datasets (hub ids, hub-layout folders, the sample) already in the messages format are checked only
with `dedupe`: hashing every record of ultrachat_200k costs a tenth of prepare-data's time.

Invalid records are dropped and reported (see ftctl.data.ultrachat.check_record), each with its line
and reason; so are JSON lines that are not strict JSON (duplicate keys, NaN) and overlong lines. Output
files are written to temporary files first (O_EXCL|O_NOFOLLOW) and moved into place only once every split
succeeded; an output path that is a symlink is replaced, never written through. An interrupt (SIGINT) that
arrives while the files are moved into place waits until all of them are.

Where the records come from is ftctl.data.sources; how one split is written, ftctl.data.writer. This
module decides which splits, writes them (a large parquet dataset shared with helper processes, one
per other core), and commits them.

`datasets` and pyarrow are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import exiting
from ftctl import state as st
from ftctl.constants import SAMPLE_DATASET as SAMPLE_DATASET
from ftctl.data import formats
from ftctl.data.sources import (
    SOURCE_FILE,
    SOURCE_HUB,
    SOURCE_HUB_LAYOUT,
    SOURCE_JSONL_DIR,
    SOURCE_SAMPLE,
    SPLIT_NAME_RE,
    Bad,
    Source,
    hub_layout_splits,
    parquet_rows,
    source_kind,
)
from ftctl.data.writer import SplitReport, SplitWriter, os_reason, short_reason
from ftctl.errors import DataError, StageFailed

if TYPE_CHECKING:
    from concurrent.futures import Future


@dataclass
class PrepareReport:
    dataset: str
    source_kind: str  # "sample" | "hub-layout" | "jsonl-dir" | "file" | "hub"
    splits: list[SplitReport] = field(default_factory=list)
    divided: str | None = None  # the one split prepare-data divided into train and test (None: it did not)
    test_pc: float = 0.0  # (when divided) the percentage of it held out
    seed: int = 0  # (when divided) the seed that chose them
    checked: bool = False  # whether duplicates and overlap were looked for

    def split(self, name: str) -> SplitReport:
        for report in self.splits:
            if report.name == name:
                return report
        raise KeyError(name)


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
    `format`: "auto" or one of ftctl.data.formats.FORMATS; `columns`: format column -> source column.
    `test_split`, `test_pc`, `seed`: where a one-split dataset's held-out records go, how many (percent),
    chosen how. `dedupe`: drop exact duplicates and test records also in train (else only reported).
    `weights`: whether the backend honours `"weight": 0` (else a record with one is refused).
    """

    subset: str | None = None
    split_pc: float = 100.0
    splits: Sequence[str] | None = None
    train_split: str = "train_sft"
    min_train_rows: int = 10
    revision: str | None = None
    engine: str = "arrow"
    format: str = formats.AUTO
    columns: Mapping[str, str] | None = None
    test_split: str = "test_sft"
    test_pc: float = 10.0
    seed: int = 0
    dedupe: bool = False
    weights: bool = True


def _check_hub_reachable(dataset: str, say: Callable[[str], None]) -> None:
    """StageFailed (exit 1: the machine's network, not the input), before any download starts, when
    the Hugging Face hub does not answer."""
    from ftctl.hub import unreachable_reason

    say(f"loading {dataset} from the Hugging Face hub...")
    why = unreachable_reason()
    if why:
        raise StageFailed(
            f"data.dataset: {dataset} is not a local folder, and the Hugging Face hub is unreachable: {why}",
            hint="use a local folder (<split>.jsonl files or a downloaded hub repo) or the shipped "
            f"sample, {SAMPLE_DATASET}",
        ) from None


def _wanted_splits(
    source: Source, available: list[str], splits: Sequence[str] | None, train_split: str
) -> list[str]:
    """The splits to write (all those of `source` unless `splits` names some), checked: they exist, make
    file names, and include the train split."""
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
        if not SPLIT_NAME_RE.match(name):
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
        raise DataError(f"{download_dir}: cannot create the download folder ({short_reason(exc)})") from None
    _remove_stale_temp_files(download_dir, splits)
    return created_dir


def _split_place(source: Source, split: str) -> str:
    """Where a split's records came from, for a message: its file, or the dataset and the split."""
    if source.kind == SOURCE_JSONL_DIR:
        return str(Path(source.location) / f"{split}.jsonl")
    if source.kind == SOURCE_FILE:
        return source.dataset
    return f"{source.label()} split {split}"


def _dropped_lines(source: Source, report: SplitReport) -> str:
    """The first dropped records (file:line and why), one per indented line: the caller's warnings about
    them are never printed when the stage fails."""
    found = format_dropped(PrepareReport(source.dataset, source.kind, [report]), limit=5)
    return "".join(f"\n  {text}" for text in found)


def _check_held_out_rows(
    source: Source, done: dict[str, tuple[SplitReport, Path]], options: PrepareOptions
) -> None:
    """DataError when every record the held-out split selected was dropped: the held-out loss the quality
    gate compares would be no number, and the gate would pass the model unchecked. (A split_pc that
    selects none of its rows is the user's choice, and passes.)"""
    test = done.get(options.test_split)
    if test is None or test[0].rows_written > 0 or test[0].rows_read == 0:
        return
    report = test[0]
    raise DataError(
        f"{_split_place(source, options.test_split)}: no valid held-out rows ({report.rows_read} read, "
        f"{len(report.dropped)} dropped); the quality gate's held-out loss needs at least 1"
        + _dropped_lines(source, report),
        hint="fix or replace the dropped records",
    )


def _check_train_rows(source: Source, train: SplitReport, options: PrepareOptions) -> None:
    """DataError naming the dropped records when the train split has too few valid rows."""
    needed = max(options.min_train_rows, 1)
    if train.rows_written >= needed:
        return
    where = _split_place(source, options.train_split)
    why = _dropped_lines(source, train)
    hint = "fix or replace the dropped records, or raise data.split_pc"
    if options.format == formats.AUTO and train.detected_at is None and train.rows_written == 0:
        hint = (
            f"no record has the columns of a format ftctl reads: {formats.EXPECTED}; name yours with "
            "data.columns (e.g. data.columns.prompt=question), or set data.format"
        )
    held = f" ({options.test_pc:g}% held out for {options.test_split})" if source.kind == SOURCE_FILE else ""
    raise DataError(
        f"{where}: only {train.rows_written} valid training rows{held} "
        f"({train.rows_read} read, {len(train.dropped)} dropped); at least {needed} needed" + why,
        hint=hint,
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
    rows: Callable[[int], None] | None = None,
) -> PrepareReport:
    """Write `<download_dir>/<split>.jsonl` for every split of `dataset` (or those `options` name).

    Takes the first `split_pc` percent of each split, drops invalid records (reported in the result),
    and replaces the output files only once all splits were read and the train split has at least
    `min_train_rows` valid rows (and never none); see PrepareOptions. Raises DataError for unusable
    input, or a download folder that cannot be written; nothing is written then. `progress` receives a
    line per split written; `rows`, the number of rows read so far (helpers' included), at most every
    REPORT_S while reading and once at the end.
    """
    opts = options or PrepareOptions()
    if opts.engine not in ("arrow", "datasets"):
        raise ValueError(f"engine must be arrow or datasets, not {opts.engine!r}")
    if opts.format != formats.AUTO and opts.format not in formats.FORMATS:
        raise DataError(
            f"data.format must be auto or one of {', '.join(formats.FORMATS)}, not {opts.format!r}"
        )
    pc = _check_split_pc(opts.split_pc)
    kind = source_kind(dataset)
    source = Source(dataset, kind, opts.subset, opts.revision, opts.engine)
    tally = _Tally(rows)
    source.counted = tally
    say = progress or (lambda _line: None)
    if kind == SOURCE_HUB:
        _check_hub_reachable(dataset, say)
    available = source.split_names()
    divided = _divided_split(source, available, opts)
    if divided is not None:
        wanted = [opts.train_split] + ([opts.test_split] if opts.test_pc > 0 else [])
        if opts.test_split == opts.train_split:
            raise DataError(f"data.test_split and data.train_split are both {opts.train_split!r}")
    else:
        wanted = _wanted_splits(source, available, opts.splits, opts.train_split)
    spec = _Spec.of(source, opts)

    download_dir = Path(download_dir)
    created_dir = _make_download_dir(download_dir, wanted)
    done: dict[str, tuple[SplitReport, Path]] = {}
    try:
        if divided is not None:
            for report, tmp in _write_divided(source, divided, pc, download_dir, spec, opts):
                done[report.name] = (report, tmp)
            say(_divided_line(source, opts, [done[split][0] for split in wanted]))
        else:
            with contextlib.closing(_write_splits(source, wanted, pc, download_dir, spec)) as written:
                for report, tmp in written:
                    done[report.name] = (report, tmp)
                    say(f"{report.name}: {report.rows_written} rows, {len(report.dropped)} dropped")
        tally.tell(final=True)
        _check_train_rows(source, done[opts.train_split][0], opts)
        _check_held_out_rows(source, done, opts)
        _check_refused([done[split][0] for split in wanted])
        _commit([done[split] for split in wanted])
    except BaseException:
        _discard(done, download_dir if created_dir else None)
        raise
    return PrepareReport(
        dataset=dataset,
        source_kind=kind,
        splits=[done[split][0] for split in wanted],
        divided=divided,
        test_pc=opts.test_pc if divided is not None else 0.0,
        seed=opts.seed,
        checked=spec.hashing or divided is not None,
    )


def _divided_split(source: Source, available: list[str], opts: PrepareOptions) -> str | None:
    """The one split prepare-data divides into train and test: a file's, or a one-split dataset's whose
    split is neither the train nor the test split (a hub dataset with only `train`); None for datasets
    with their own."""
    if source.kind == SOURCE_FILE:
        return available[0]
    if (
        opts.splits is None
        and len(available) == 1
        and available[0] not in (opts.train_split, opts.test_split)
    ):
        return available[0]
    return None


def _divided_line(source: Source, opts: PrepareOptions, reports: Sequence[SplitReport]) -> str:
    """`my.jsonl: 120 records, 2 dropped: train_sft 106, test_sft 12 (10%, seed 0)`."""
    first = reports[0]
    parts = ", ".join(f"{r.name} {r.rows_written}" for r in reports)
    held = f" ({opts.test_pc:g}% held out, seed {opts.seed})" if len(reports) > 1 else ""
    return f"{first.where}: {first.rows_read} records, {len(first.dropped)} dropped: {parts}{held}"


def _check_refused(reports: Sequence[SplitReport]) -> None:
    """DataError naming the records with weight 0, where the backend cannot leave a reply out."""
    refused = [(r.where, d) for r in reports for d in r.refused]
    if not refused:
        return
    where, first = refused[0]
    more = f" (and {len(refused) - 1} more records)" if len(refused) > 1 else ""
    raise DataError(
        f"{where}:{first.line}: an assistant message has weight 0{more}, and this backend trains on every "
        "assistant reply: it cannot leave one out",
        hint="remove the weight 0 turns (or their weight, to train on them), or use the local backend, "
        "which honours weight 0",
    )


REPORT_S = 0.1  # how often prepare's `rows` callback hears the count, at most


class _Tally:
    """Rows read so far by one prepare(): this process's (it is its Source's `counted`) and its helpers'
    (`helpers`, a shared counter they add to), told to `report` at most every REPORT_S."""

    def __init__(self, report: Callable[[int], None] | None) -> None:
        self.report = report
        self.here = 0
        self.helpers: Any = None  # a multiprocessing.Value, while helpers write
        self._due = 0.0

    def __call__(self, rows: int) -> None:
        self.here += rows
        self.tell()

    def tell(self, final: bool = False) -> None:
        now = time.monotonic()
        if self.report is not None and (final or now >= self._due):
            self._due = now + REPORT_S
            self.report(self.here + (self.helpers.value if self.helpers is not None else 0))


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
                raise DataError(f"{report.path}: cannot replace it ({os_reason(exc)})") from None
            # The writer hashed every byte it wrote: the stage's output signatures need not read it again.
            st.vouch_digest(report.path, report.written, f"sha256:{report.sha256}")


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


DETECT_LIMIT = 100  # records read to find the format before the split is read as OpenAI chat


@dataclass(frozen=True)
class _Spec:
    """How a split's records are read and written (picklable: it goes to helper processes)."""

    format: str = formats.AUTO
    columns: tuple[tuple[str, str], ...] = ()
    decode_lists: bool = False  # CSV: list columns hold JSON text
    hashing: bool = False  # look for duplicates (and overlap): always, whatever the format
    dedupe: bool = False
    weights: bool = True
    train_split: str = "train_sft"
    test_split: str = "test_sft"

    @classmethod
    def of(cls, source: Source, opts: PrepareOptions) -> _Spec:
        hub = source.kind in (SOURCE_SAMPLE, SOURCE_HUB_LAYOUT, SOURCE_HUB)
        columns = tuple((opts.columns or {}).items())
        return cls(
            format=opts.format,
            columns=columns,
            decode_lists=source.kind == SOURCE_FILE and source.location.lower().endswith(".csv"),
            hashing=opts.dedupe
            or not hub
            or bool(columns)
            or opts.format not in (formats.AUTO, formats.OPENAI),
            dedupe=opts.dedupe,
            weights=opts.weights,
            train_split=opts.train_split,
            test_split=opts.test_split,
        )

    def writer(self, download_dir: Path, split: str, **extra: Any) -> SplitWriter:
        return SplitWriter(
            download_dir, split, hashing=self.hashing, dedupe=self.dedupe, weights=self.weights, **extra
        )


def _records(rows: Iterator[tuple[int, Any]], spec: _Spec, writer: SplitWriter) -> Iterator[tuple[int, Any]]:
    """`rows` converted to the ultrachat shape (Bad for those that cannot be); the format found (or
    forced) is noted on `writer`, which then also looks for duplicates unless it is OpenAI chat."""
    columns = dict(spec.columns)
    fmt = spec.format
    pending: list[tuple[int, Any]] = []
    if fmt == formats.AUTO:
        for number, record in rows:
            pending.append((number, record))
            if isinstance(record, Bad):
                continue
            found = formats.detect(formats.rename(record, columns) if columns else record)
            if found is not None:
                fmt, writer.detected_at = found, number
                break
            if len(pending) >= DETECT_LIMIT:
                break
        if fmt == formats.AUTO:  # no record has any format's columns: each says what it lacks
            fmt = formats.OPENAI
    writer.format = fmt
    writer.hashing = writer.hashing or fmt != formats.OPENAI
    if fmt == formats.OPENAI and not columns and not spec.decode_lists:  # ultrachat: as it is
        yield from pending
        yield from rows
        return
    convert = formats.CONVERTERS[fmt]
    for number, record in itertools.chain(pending, rows):
        if isinstance(record, Bad):
            yield number, record
            continue
        if columns:
            record = formats.rename(record, columns)
        if spec.decode_lists and isinstance(record, dict):
            record = formats.decode_lists(record)
        converted = record if isinstance(record, str) else convert(record)
        yield number, Bad(converted) if isinstance(converted, str) else converted


def _write_one(
    source: Source,
    split: str,
    pc: float,
    download_dir: Path,
    spec: _Spec,
    exclude: Mapping[bytes, int] | None = None,
) -> tuple[SplitReport, Path, dict[bytes, int]]:
    """Read, validate and write one split to a temp file; (its report, the temp file, the digests of
    its records when it looked for duplicates)."""
    writer = spec.writer(download_dir, split, exclude=exclude)
    _fill(writer, _records(source.rows(split, pc), spec, writer))
    return dataclasses.replace(writer.report(), where=source.where(split)), writer.tmp, writer.digests


def _write_one_in_worker(
    args: tuple[str, str, str | None, str | None, str, str, float, str, _Spec],
) -> tuple[SplitReport, Path]:
    dataset, kind, subset, revision, engine, split, pc, download_dir, spec = args
    source = Source(dataset, kind, subset, revision, engine)
    if _helper_rows is not None:
        source.counted = _count_in_helper
    report, tmp, _ = _write_one(source, split, pc, Path(download_dir), spec)
    return report, tmp


def held_out_count(valid: int, test_pc: float) -> int:
    """How many of `valid` records a one-split dataset holds out: `test_pc` percent, rounded, at least one
    and never all (none when test_pc is 0 or there are fewer than 2)."""
    if test_pc <= 0 or valid < 2:
        return 0
    return min(max(int(math.floor(valid * test_pc / 100 + 0.5)), 1), valid - 1)


def _write_divided(
    source: Source, split: str, pc: float, download_dir: Path, spec: _Spec, opts: PrepareOptions
) -> list[tuple[SplitReport, Path]]:
    """One split's valid records, divided into the train and test splits: `held_out_count` of them, chosen
    by a seeded shuffle, go to the test split, in their order. Duplicates are found in the whole split
    first (dropped with dedupe: no record is then on both sides); without dedupe, a test record whose
    copy went to train is reported as overlap."""
    pool = spec.writer(download_dir, opts.train_split)
    pool.hashing, pool.order, pool.lines = True, [], []
    _fill(pool, _records(source.rows(split, pc), spec, pool))
    where = source.where(split)
    outputs: list[SplitWriter] = []
    try:
        order, lines = pool.order or [], pool.lines or []
        chosen = set(
            random.Random(opts.seed).sample(range(len(order)), held_out_count(len(order), opts.test_pc))
        )
        train = SplitWriter(download_dir, opts.train_split)
        outputs.append(train)
        test = SplitWriter(download_dir, opts.test_split) if opts.test_pc > 0 else None
        if test is not None:
            outputs.append(test)
        in_train: dict[bytes, int] = {}
        for i, digest in enumerate(order):
            if i not in chosen:
                in_train.setdefault(digest, lines[i])
        with pool.tmp.open("rb") as fh:
            for i, data in enumerate(fh):
                if test is not None and i in chosen:
                    test.add_written(data)
                    if order[i] in in_train:
                        test.overlap.append((lines[i], in_train[order[i]]))
                else:
                    train.add_written(data)
        for writer in outputs:
            writer.close()
    except BaseException:
        for writer in outputs:
            writer.discard()
        raise
    finally:
        pool.discard()
    first = pool.report()
    found = [
        dataclasses.replace(
            train.report(),
            where=where,
            rows_read=first.rows_read,
            dropped=first.dropped,
            format=first.format,
            detected_at=first.detected_at,
            duplicates=first.duplicates,
            refused=first.refused,
        )
    ]
    if test is not None:
        found.append(dataclasses.replace(test.report(), where=where, format=first.format))
    return [(report, writer.tmp) for report, writer in zip(found, outputs, strict=True)]


def _write_splits(
    source: Source, splits: Sequence[str], pc: float, download_dir: Path, spec: _Spec
) -> Generator[tuple[SplitReport, Path], None, None]:
    """Write every split. Large parquet datasets are shared between this process and one helper process
    per other core (`_shares`). When duplicates are looked for, the train split is written first and the
    test split checked against it."""
    workers = min(_cores(), len(splits))
    sizes: dict[str, float] = {}
    parallel = (
        not spec.hashing and source.engine == "arrow" and source.kind in (SOURCE_SAMPLE, SOURCE_HUB_LAYOUT)
    )
    if workers > 1 and parallel:
        files = hub_layout_splits(Path(source.location))
        sizes = {split: parquet_rows(files[split]) * min(pc, 100.0) / 100 for split in splits}
    if sum(sizes.values()) < PARALLEL_MIN_ROWS:
        train: dict[bytes, int] = {}
        for split in sorted(splits, key=lambda name: name != spec.train_split):  # train first
            exclude = train if split == spec.test_split else None
            report, tmp, digests = _write_one(source, split, pc, download_dir, spec, exclude)
            if split == spec.train_split:
                train = digests
            yield report, tmp
        return
    method, start_rows = _helper_start()
    results = _write_shared(source, _shares(sizes, workers - 1, start_rows), pc, download_dir, spec, method)
    remaining = [results[split] for split in splits]
    try:
        while remaining:
            yield remaining.pop(0)
    finally:  # closed early (the caller failed or was interrupted): the temp files not handed over go
        for _, tmp in remaining:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


PARALLEL_MIN_ROWS = 10_000  # rows to read; below this one process is as fast (a helper starts in ~0.2 s)
HELPER_START_ROWS = 4_000  # what this process writes while a spawned helper starts (~0.2 s at ~50 us a row)


def _helper_start() -> tuple[str, int]:
    """How helpers start (a multiprocessing start method), and how many rows this process writes
    meanwhile. `fork` where this process runs no other Python thread and has not loaded torch: the
    helper starts in milliseconds with pyarrow and ftctl already imported, where `spawn` starts a new
    interpreter that imports them again, ~0.3 s of the other core (a tenth of ultrachat_200k: 1.59 s
    against 1.92 s a prepare-data, medians of 8 alternating runs). Otherwise `spawn`: a fork would copy
    another thread's locks mid-state (MLflow's, torch's thread pools). The native threads pyarrow
    starts (jemalloc's, the BLAS pool's) are fork-aware, as the forking data loaders of torch and
    datasets rely on."""
    if sys.platform == "linux" and threading.active_count() == 1 and "torch" not in sys.modules:
        return "fork", 0
    return "spawn", HELPER_START_ROWS


def _shares(sizes: Mapping[str, float], helpers: int, start_rows: int) -> tuple[list[str], list[str]]:
    """(this process's splits, the helpers' splits): biggest first, each to whoever would finish its work
    first, the helpers counted as starting `start_rows` rows late. Ties go to this process."""
    loads = [0.0] + [float(start_rows)] * helpers
    mine: list[str] = []
    theirs: list[str] = []
    for split in sorted(sizes, key=lambda name: -sizes[name]):
        least = min(range(len(loads)), key=loads.__getitem__)
        loads[least] += sizes[split]
        (mine if least == 0 else theirs).append(split)
    return mine, theirs


def _write_shared(
    source: Source,
    shares: tuple[Sequence[str], Sequence[str]],
    pc: float,
    download_dir: Path,
    spec: _Spec,
    method: str,
) -> dict[str, tuple[SplitReport, Path]]:
    """Write this process's share of the splits (`_shares`) while helpers (started by `method`), one per
    other core, write theirs; {split: (report, temp file)}. On any failure or interrupt, every temp file
    goes."""
    mine, theirs = shares
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    results: dict[str, tuple[SplitReport, Path]] = {}
    futures: list[Future[tuple[SplitReport, Path]]] = []
    pool = None
    tally = source.counted if isinstance(source.counted, _Tally) else _Tally(None)
    try:
        if theirs:
            where = (source.dataset, source.kind, source.subset, source.revision, source.engine)
            helpers = min(len(theirs), _cores() - 1)
            context = multiprocessing.get_context(method)
            tally.helpers = context.Value("q", 0)
            pool = ProcessPoolExecutor(
                helpers,
                mp_context=context,
                initializer=_start_helper,
                initargs=(os.getpid(), tally.helpers),
            )
            futures = [
                pool.submit(_write_one_in_worker, (*where, s, pc, str(download_dir), spec)) for s in theirs
            ]
        for split in mine:
            report, tmp, _ = _write_one(source, split, pc, download_dir, spec)
            results[split] = (report, tmp)
        pending = set(futures)
        while pending:  # the helpers' rows go on being told while this process waits for them
            finished, pending = wait(pending, timeout=REPORT_S, return_when=FIRST_EXCEPTION)
            tally.tell()
            failed = next((f for f in finished if f.exception() is not None), None)
            if failed is not None:
                raise _helper_failure(failed.exception(), theirs)  # type: ignore[arg-type]
        results.update((f.result()[0].name, f.result()) for f in futures)
    except BaseException:  # a split failed, or KeyboardInterrupt: stop the helpers, delete what was written
        for _, tmp in results.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        if pool is not None:
            _abandon(pool, futures, download_dir, theirs)
        raise
    if pool is not None:
        pool.shutdown()
    return results


def _helper_failure(exc: BaseException, splits: Sequence[str]) -> BaseException:
    """What a helper's failure is to the user: its own error, or, for a helper that died (SIGKILL, the
    kernel's OOM killer; concurrent.futures says "BrokenProcessPool"), which splits it was writing."""
    from concurrent.futures.process import BrokenProcessPool

    if not isinstance(exc, BrokenProcessPool):
        return exc
    return StageFailed(
        f"the helper process writing {', '.join(splits)} ended abruptly (killed, or out of memory?); "
        "nothing was written",
        hint="if memory is short, stop what else runs",
    )


_helper_rows: Any = None  # in a helper process: the counter its rows read are added to (_start_helper)


def _count_in_helper(rows: int) -> None:
    with _helper_rows.get_lock():
        _helper_rows.value += rows


def _start_helper(parent: int, rows: Any) -> None:
    """A helper's first act: keep the counter its rows go to, and watch the process that started it and
    end when it has gone. Killed (SIGKILL leaves no time to stop helpers), it would otherwise leave its
    helpers waiting for work forever, and their temp files, those of live processes, where no later run
    removes them (tests/reliability/test_data_output.py)."""
    global _helper_rows
    _helper_rows = rows
    exiting.sigterm_as_default()  # forked: its parent's SIGTERM handler, which is for the command

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="ftctl-helper-parent", daemon=True).start()


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
    wanted = set(splits)
    for path in download_dir.glob(".*.tmp"):
        found = _TEMP_RE.match(path.name)
        if found and found["split"] in wanted and not st.pid_alive(int(found["pid"])):
            with contextlib.suppress(OSError):
                path.unlink()


def _fill(writer: SplitWriter, rows: Iterable[tuple[int, Any]]) -> None:
    """Write `rows` and close the writer; its temp file is deleted if anything fails."""
    try:
        for number, record in rows:
            if isinstance(record, Bad):
                writer.drop(number, record.reason)
            else:
                writer.add(number, record)
        writer.close()
    except BaseException:
        writer.discard()
        raise


def format_dropped(report: PrepareReport, limit: int = 10) -> list[str]:
    """Lines like `train_sft.jsonl:17: fewer than 2 messages (1)`, at most `limit`, then "... and N more"."""
    lines: list[str] = []
    total = 0
    for split in report.splits:
        where = split.where or (
            f"{split.name}.jsonl" if report.source_kind == SOURCE_JSONL_DIR else split.name
        )
        for dropped in split.dropped:
            total += 1
            if len(lines) < limit:
                lines.append(f"{where}:{dropped.line}: {dropped.reason}")
    if total > len(lines):
        lines.append(f"... and {total - len(lines)} more")
    return lines


def format_checks(report: PrepareReport, dedupe: bool, limit: int = 3) -> list[str]:
    """What the duplicate and overlap checks found, a line per split that has any (empty when none)."""
    lines: list[str] = []
    for split in report.splits:
        for found, what in (
            (split.duplicates, "exact duplicates"),
            (split.overlap, "also in the train split"),
        ):
            if not found:
                continue
            pairs = ", ".join(f"{split.where}:{line} = line {other}" for line, other in found[:limit])
            more = f", ... ({len(found) - limit} more)" if len(found) > limit else ""
            done = "dropped" if dedupe else "kept: set data.dedupe=true to drop them"
            if what == "exact duplicates":  # in a divided file: found before it was divided
                name = split.where if report.divided is not None else split.name
                lines.append(f"{name}: {len(found)} {what} ({pairs}{more}); {done}")
            else:
                lines.append(f"{split.name}: {len(found)} records {what} ({pairs}{more}); {done}")
    return lines
