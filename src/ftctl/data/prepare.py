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

Where the records come from is ftctl.data.sources; how one split is written, ftctl.data.writer. This
module decides which splits, writes them (in worker processes for large ones), and commits them.

`datasets` and pyarrow are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.constants import SAMPLE_DATASET as SAMPLE_DATASET
from ftctl.data.sources import (
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
    source_kind: str  # "sample" | "hub-layout" | "jsonl-dir" | "hub"
    splits: list[SplitReport] = field(default_factory=list)

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
    """

    subset: str | None = None
    split_pc: float = 100.0
    splits: Sequence[str] | None = None
    train_split: str = "train_sft"
    min_train_rows: int = 10
    revision: str | None = None
    engine: str = "arrow"


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


def _wanted_splits(source: Source, splits: Sequence[str] | None, train_split: str) -> list[str]:
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


def _check_train_rows(source: Source, train: SplitReport, options: PrepareOptions) -> None:
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
    source = Source(dataset, kind, opts.subset, opts.revision, opts.engine)
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
                raise DataError(f"{report.path}: cannot replace it ({os_reason(exc)})") from None


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


def _write_one(source: Source, split: str, pc: float, download_dir: Path) -> tuple[SplitReport, Path]:
    """Read, validate and write one split to a temp file; (its report, the temp file)."""
    writer = SplitWriter(download_dir, split)
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
    return _write_one(Source(dataset, kind, subset, revision, engine), split, pc, Path(download_dir))


def _write_splits(
    source: Source, splits: Sequence[str], pc: float, download_dir: Path
) -> Generator[tuple[SplitReport, Path], None, None]:
    """Write every split; large parquet datasets use one process per core, biggest split first."""
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, len(splits))
    sizes: dict[str, int] = {}
    if workers > 1 and source.engine == "arrow" and source.kind in (SOURCE_SAMPLE, SOURCE_HUB_LAYOUT):
        files = hub_layout_splits(Path(source.location))
        sizes = {split: parquet_rows(files[split]) for split in splits}
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


def _fill(writer: SplitWriter, rows: Iterable[tuple[int, Any]]) -> None:
    for number, record in rows:
        if isinstance(record, Bad):
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
