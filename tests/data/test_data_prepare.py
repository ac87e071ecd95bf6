from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.data import sample
from ftctl.data.prepare import SAMPLE_DATASET, PrepareOptions, PrepareReport, format_dropped, prepare
from ftctl.data.sources import source_kind
from ftctl.data.writer import Dropped, SplitReport
from ftctl.errors import DataError, StageFailed

SAMPLE_SIZES = {"train_sft": 400, "test_sft": 60, "train_gen": 400, "test_gen": 60}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- the shipped sample -------------------------------------------------------------------------


def test_prepare_sample(tmp_path):
    out = tmp_path / "out"
    lines: list[str] = []
    report = prepare(SAMPLE_DATASET, out, progress=lines.append)
    assert isinstance(report, PrepareReport)
    assert report.dataset == SAMPLE_DATASET and report.source_kind == "sample"
    assert [s.name for s in report.splits] == list(SAMPLE_SIZES)
    assert _listing(out) == sorted(f"{name}.jsonl" for name in SAMPLE_SIZES)
    for split in report.splits:
        assert isinstance(split, SplitReport)
        assert split.path == out / f"{split.name}.jsonl"
        assert split.rows_read == split.rows_written == SAMPLE_SIZES[split.name]
        assert split.dropped == []
        data = split.path.read_bytes()
        assert split.bytes == len(data)
        assert split.sha256 == hashlib.sha256(data).hexdigest()
        assert len(_lines(split.path)) == split.rows_written
    assert "train_sft: 400 rows, 0 dropped" in lines
    # Rows are written as they are, columns and order included.
    shipped = list(sample.iter_sample_conversations("test_sft"))
    assert _lines(out / "test_sft.jsonl") == shipped
    # Non-ASCII stays readable (ensure_ascii=False).
    text = (out / "train_sft.jsonl").read_text(encoding="utf-8") + (out / "train_gen.jsonl").read_text(
        encoding="utf-8"
    )
    assert "\\u" not in text


@pytest.mark.parametrize(
    ("pc", "expected"),
    [
        (50, {"train_sft": 200, "test_sft": 30, "train_gen": 200, "test_gen": 30}),
        (5, {"train_sft": 20, "test_sft": 3, "train_gen": 20, "test_gen": 3}),
        (2.5, {"train_sft": 10, "test_sft": 2, "train_gen": 10, "test_gen": 2}),
    ],
)
def test_prepare_sample_split_pc(tmp_path, pc, expected):
    report = prepare(SAMPLE_DATASET, tmp_path / "out", PrepareOptions(split_pc=pc))
    assert {s.name: s.rows_written for s in report.splits} == expected
    # The first rows, in order.
    first = _lines(tmp_path / "out" / "test_sft.jsonl")
    assert first == list(sample.iter_sample_conversations("test_sft"))[: expected["test_sft"]]


def test_prepare_selected_splits(tmp_path):
    report = prepare(SAMPLE_DATASET, tmp_path, PrepareOptions(splits=["train_sft", "test_sft"], split_pc=10))
    assert [s.name for s in report.splits] == ["train_sft", "test_sft"]
    assert _listing(tmp_path) == ["test_sft.jsonl", "train_sft.jsonl"]


def test_prepare_overwrites_previous_output(tmp_path):
    prepare(SAMPLE_DATASET, tmp_path, PrepareOptions(split_pc=50))
    report = prepare(SAMPLE_DATASET, tmp_path, PrepareOptions(split_pc=5))
    assert len(_lines(tmp_path / "train_sft.jsonl")) == 20
    assert report.split("train_sft").rows_written == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- a hub-layout folder ------------------------------------------------------------------------


def test_prepare_hub_layout_with_bad_rows(tmp_path, write_hub_layout, make_chat):
    train = [make_chat(i) for i in range(1, 15)]
    train[4]["messages"] = train[4]["messages"][:1]  # row 5
    train[8]["messages"][1]["role"] = "bot"  # row 9
    train[11]["messages"][1]["content"] = "   "  # row 12
    src = write_hub_layout({"train_sft": train, "test_sft": [make_chat(i) for i in range(100, 104)]})
    assert source_kind(str(src)) == "hub-layout"

    out = tmp_path / "out"
    report = prepare(str(src), out)
    assert report.source_kind == "hub-layout"
    tr = report.split("train_sft")
    assert (tr.rows_read, tr.rows_written) == (14, 11)
    assert [d.line for d in tr.dropped] == [5, 9, 12]
    assert "fewer than 2 messages" in tr.dropped[0].reason
    assert "role 'bot'" in tr.dropped[1].reason
    assert "content is empty" in tr.dropped[2].reason
    written = _lines(out / "train_sft.jsonl")
    assert [r["prompt_id"] for r in written] == [
        make_chat(i)["prompt_id"] for i in range(1, 15) if i not in (5, 9, 12)
    ]
    assert written[0] == make_chat(1)
    assert report.split("test_sft").rows_written == 4

    lines = format_dropped(report)
    assert lines[0].startswith("train_sft:5: fewer than 2 messages")
    assert lines[1].startswith("train_sft:9: message 1 has role 'bot'")
    assert len(lines) == 3


def test_split_pc_rounding_matches_datasets(tmp_path, write_hub_layout, write_jsonl_dir, make_chat):
    # The jsonl reader takes the same number of rows as datasets' "[0%:N%]" slicing.
    rows = {"train_sft": [make_chat(i) for i in range(1, 31)], "test_sft": [make_chat(i) for i in range(7)]}
    hub = write_hub_layout(rows)
    jsonl = write_jsonl_dir(rows)
    for pc in (5, 10, 25, 50, 83, 99, 17.5):
        a = prepare(str(hub), tmp_path / f"hub-{pc}", PrepareOptions(split_pc=pc, min_train_rows=0))
        b = prepare(str(jsonl), tmp_path / f"jsonl-{pc}", PrepareOptions(split_pc=pc, min_train_rows=0))
        counts_a = {s.name: s.rows_written for s in a.splits}
        counts_b = {s.name: s.rows_written for s in b.splits}
        assert counts_a == counts_b, pc
        expected = {"train_sft": int(round(pc * 30 / 100)), "test_sft": int(round(pc * 7 / 100))}
        assert counts_b == expected, pc
        assert a.split("train_sft").sha256 == b.split("train_sft").sha256
    # 1% of 30 rows is no row: no training row is an error, even with min_train_rows=0.
    for src in (hub, jsonl):
        with pytest.raises(DataError, match=r"only 0 valid training rows \(0 read, 0 dropped\); at least 1"):
            prepare(str(src), tmp_path / "one-pc", PrepareOptions(split_pc=1, min_train_rows=0))


# --- a folder of <split>.jsonl files --------------------------------------------------------------


def test_prepare_jsonl_dir_reports_bad_lines(tmp_path, write_jsonl_dir, make_chat):
    good = [make_chat(i, source="unit-test") for i in range(1, 13)]
    single = make_chat(90)
    single["messages"] = single["messages"][:1]
    empty = make_chat(91)
    empty["messages"][0]["content"] = ""
    bad_role = make_chat(92)
    bad_role["messages"][0]["role"] = "human"
    train = [
        good[0],
        good[1],
        '{"messages": [ {"role": "user", "content": "hi"',  # line 3: invalid JSON
        good[2],
        good[3],
        single,  # line 6
        good[4],
        empty,  # line 8
        good[5],
        bad_role,  # line 10
        "",  # line 11: blank, skipped
        '["not", "an", "object"]',  # line 12
        good[6],
        {"no_messages": True},  # line 14
        *good[7:],
    ]
    src = write_jsonl_dir({"train_sft": train, "test_sft": [make_chat(200), "{oops"]})
    assert source_kind(str(src)) == "jsonl-dir"
    out = tmp_path / "out"
    report = prepare(str(src), out)
    tr = report.split("train_sft")
    assert [(d.line, d.reason.split(":")[0].split(" (")[0]) for d in tr.dropped] == [
        (3, "invalid JSON"),
        (6, "fewer than 2 messages"),
        (8, "message 0 content is empty"),
        (10, "message 0 has role 'human', not one of system, user, assistant"),
        (12, "not an object"),
        (14, "no 'messages' field"),
    ]
    assert tr.rows_read == 18 and tr.rows_written == 12
    assert _lines(out / "train_sft.jsonl") == good  # extra columns kept, order kept
    te = report.split("test_sft")
    assert (te.rows_written, [d.line for d in te.dropped]) == (1, [2])

    # Splits of a jsonl folder come in file-name order: test_sft, then train_sft.
    assert [s.name for s in report.splits] == ["test_sft", "train_sft"]
    lines = format_dropped(report, limit=3)
    assert lines[0].startswith("test_sft.jsonl:2: invalid JSON")
    assert lines[1].startswith("train_sft.jsonl:3: invalid JSON")
    assert lines[2] == "train_sft.jsonl:6: fewer than 2 messages (1)"
    assert lines[3] == "... and 4 more"
    assert format_dropped(report, limit=100)[-1] == "train_sft.jsonl:14: no 'messages' field"


def test_jsonl_dir_bad_utf8_and_bom(tmp_path, make_chat):
    src = tmp_path / "src"
    src.mkdir()
    body = "\n".join(json.dumps(make_chat(i), ensure_ascii=False) for i in range(1, 4)).encode()
    (src / "train_sft.jsonl").write_bytes(b"\xef\xbb\xbf" + body + b"\n\xff\xfe{}\n")
    report = prepare(str(src), tmp_path / "out", PrepareOptions(min_train_rows=3))
    tr = report.split("train_sft")
    assert tr.rows_written == 3
    assert tr.dropped == [Dropped(4, tr.dropped[0].reason)]
    assert "UTF-8" in tr.dropped[0].reason


# --- failures leave nothing behind ----------------------------------------------------------------


def test_too_few_train_rows_writes_nothing(tmp_path, write_jsonl_dir, make_chat):
    src = write_jsonl_dir({"train_sft": [make_chat(1), make_chat(2), "{bad"], "test_sft": [make_chat(3)]})
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        prepare(str(src), out)
    message = str(info.value)
    assert "train_sft.jsonl" in message and "only 2 valid" in message and "10" in message
    assert _listing(out) == []

    # An existing folder with earlier output: untouched, and no temp files left.
    out.mkdir(exist_ok=True)
    (out / "train_sft.jsonl").write_text("old\n")
    with pytest.raises(DataError):
        prepare(str(src), out, PrepareOptions(min_train_rows=3))
    assert _listing(out) == ["train_sft.jsonl"]
    assert (out / "train_sft.jsonl").read_text() == "old\n"


def test_failure_in_a_later_split_writes_nothing(tmp_path, write_hub_layout, make_chat):
    src = write_hub_layout({"train_sft": [make_chat(i) for i in range(20)], "test_sft": [make_chat(99)]})
    broken = next((src / "data").glob("test_sft-*.parquet"))
    broken.write_bytes(b"PAR1 this is not a parquet file PAR1")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match="parquet") as info:
        prepare(str(src), out)
    assert "test_sft" in info.value.message
    assert _listing(out) == []


def test_failure_through_datasets_writes_nothing(tmp_path, write_hub_layout, make_chat, monkeypatch):
    src = write_hub_layout({"train_sft": [make_chat(i) for i in range(20)], "test_sft": [make_chat(99)]})
    out = tmp_path / "out"
    out.mkdir()
    import datasets

    real = datasets.load_dataset

    def flaky(path, *args, split=None, **kwargs):
        if str(split).startswith("test_sft"):
            raise ValueError("corrupt parquet file")
        return real(path, *args, split=split, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", flaky)
    with pytest.raises(DataError, match="corrupt parquet"):
        prepare(str(src), out, PrepareOptions(engine="datasets"))
    assert _listing(out) == []


@pytest.mark.parametrize("pc", [100, 37.5])
def test_arrow_and_datasets_engines_write_the_same_files(tmp_path, pc):
    """The fast pyarrow reader and the hub path through `datasets.load_dataset` agree byte for byte."""
    fast = prepare(SAMPLE_DATASET, tmp_path / "arrow", PrepareOptions(split_pc=pc))
    hub = prepare(SAMPLE_DATASET, tmp_path / "datasets", PrepareOptions(split_pc=pc, engine="datasets"))
    assert [s.name for s in fast.splits] == [s.name for s in hub.splits] == list(SAMPLE_SIZES)
    for a, b in zip(fast.splits, hub.splits, strict=True):
        assert (a.rows_written, a.sha256) == (b.rows_written, b.sha256)
        assert a.path.read_bytes() == b.path.read_bytes()


@pytest.mark.parametrize("pc", [0, -5, 100.5, 1000, float("nan"), "abc", None])
def test_bad_split_pc(tmp_path, pc):
    with pytest.raises(DataError, match=r"data\.split_pc"):
        prepare(SAMPLE_DATASET, tmp_path / "out", PrepareOptions(split_pc=pc))
    assert not (tmp_path / "out").exists()


def test_missing_train_split(tmp_path, write_jsonl_dir, make_chat):
    src = write_jsonl_dir({"train": [make_chat(i) for i in range(20)], "test": [make_chat(50)]})
    with pytest.raises(DataError, match="'train_sft'.*train, test|train_sft.*test, train") as info:
        prepare(str(src), tmp_path / "out")
    assert "test" in str(info.value)
    report = prepare(str(src), tmp_path / "out", PrepareOptions(train_split="train"))
    assert [s.name for s in report.splits] == ["test", "train"]


def test_unknown_requested_split(tmp_path):
    with pytest.raises(DataError, match="validation.*splits found: train_sft, test_sft"):
        prepare(SAMPLE_DATASET, tmp_path / "out", PrepareOptions(splits=["train_sft", "validation"]))


@pytest.mark.parametrize("name", ["./does-not-exist", "no/such/folder", "~/nope-ftctl-xyz", "data.jsonl"])
def test_nonexistent_path(tmp_path, name):
    what = "file" if name.endswith(".jsonl") else "folder"
    with pytest.raises(DataError, match=f"no such {what}") as info:
        prepare(name, tmp_path / "out")
    assert name in str(info.value)


def test_absolute_nonexistent_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(DataError, match="no such folder") as info:
        prepare(str(missing), tmp_path / "out")
    assert str(missing) in str(info.value)


def test_folder_without_dataset(tmp_path):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no dataset found") as info:
        prepare(str(folder), tmp_path / "out")
    assert str(folder) in str(info.value)


def test_file_of_an_unknown_type_instead_of_folder(tmp_path, make_chat):
    path = tmp_path / "train_sft.txt"
    path.write_text(json.dumps(make_chat(1)) + "\n")
    with pytest.raises(DataError, match="is a file that is not .jsonl, .json, .csv or .parquet"):
        prepare(str(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_builtin_dataset(tmp_path):
    with pytest.raises(DataError, match="ftctl:nope"):
        prepare("ftctl:nope", tmp_path / "out")


def test_subset_rejected_for_local_sources(tmp_path):
    with pytest.raises(DataError, match=r"data\.subset"):
        prepare(SAMPLE_DATASET, tmp_path / "out", PrepareOptions(subset="other"))


def test_hub_unreachable_is_a_runtime_failure(tmp_path):
    # The autouse fixture puts huggingface_hub in offline mode, as on a machine without network.
    out = tmp_path / "out"
    lines: list[str] = []
    with pytest.raises(StageFailed, match="unreachable") as info:
        prepare("HuggingFaceH4/ultrachat_200k", out, progress=lines.append)
    assert "HuggingFaceH4/ultrachat_200k" in str(info.value)
    assert SAMPLE_DATASET in (info.value.hint or "")
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert _listing(out) == []
    assert lines and "Hugging Face hub" in lines[0]


def test_source_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert source_kind(SAMPLE_DATASET) == "sample"
    assert source_kind("HuggingFaceH4/ultrachat_200k") == "hub"
    assert source_kind("squad") == "hub"
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "train.jsonl").write_text("")
    assert source_kind("squad") == "jsonl-dir"  # an existing local folder wins over a hub id
    assert source_kind(str(sample.default_output_dir())) == "hub-layout"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_parallel_writer_matches_sequential(tmp_path, monkeypatch, method):
    """Large parquet datasets are shared with a helper process per other core, forked where this process
    runs no other thread, else spawned: the same bytes either way."""
    sequential = prepare(SAMPLE_DATASET, tmp_path / "seq")
    import ftctl.data.prepare as module

    monkeypatch.setattr(module, "PARALLEL_MIN_ROWS", 10)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    late = 0 if method == "fork" else module.HELPER_START_ROWS
    monkeypatch.setattr(module, "_helper_start", lambda: (method, late))
    parallel = prepare(SAMPLE_DATASET, tmp_path / "par")
    assert [(s.name, s.rows_written, s.sha256) for s in parallel.splits] == [
        (s.name, s.rows_written, s.sha256) for s in sequential.splits
    ]
    assert _listing(tmp_path / "par") == sorted(f"{s}.jsonl" for s in SAMPLE_SIZES)


@pytest.mark.parametrize("method", [None, "fork", "spawn"], ids=["alone", "forked", "spawned"])
def test_rows_read_are_told_as_they_go_and_in_full_at_the_end(tmp_path, monkeypatch, method):
    """prepare's `rows` callback hears the rows read so far, a helper's as well as this process's, while
    it reads (a live count for a long read) and the total at the end."""
    import ftctl.data.prepare as module
    import ftctl.data.sources as sources

    monkeypatch.setattr(sources, "COUNT_EVERY", 5)
    monkeypatch.setattr(module, "REPORT_S", 0.0)  # every count is told
    if method is not None:
        monkeypatch.setattr(module, "PARALLEL_MIN_ROWS", 10)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        monkeypatch.setattr(module, "_helper_start", lambda: (method, 0))
    told: list[int] = []
    report = prepare(SAMPLE_DATASET, tmp_path / "out", rows=told.append)
    total = sum(split.rows_read for split in report.splits)
    assert told[-1] == total == sum(SAMPLE_SIZES.values())
    assert told == sorted(told) and len(set(told)) > 3, told  # rising, in steps, not once at the end
    if method is not None:  # the helper's splits are counted too, not only this process's
        here = max(SAMPLE_SIZES.values())
        assert total > here


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_parallel_failure_leaves_nothing(tmp_path, write_hub_layout, make_chat, monkeypatch, method):
    import ftctl.data.prepare as module

    monkeypatch.setattr(module, "PARALLEL_MIN_ROWS", 10)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(module, "_helper_start", lambda: (method, 0))
    src = write_hub_layout({"train_sft": [make_chat(i) for i in range(30)], "test_sft": [make_chat(99)] * 5})
    next((src / "data").glob("test_sft-*.parquet")).write_bytes(b"PAR1 broken PAR1")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match="test_sft"):
        prepare(str(src), out)
    assert _listing(out) == []


def test_shares_give_this_process_the_biggest_split_and_the_helpers_a_late_start() -> None:
    """A large parquet dataset is shared between this process and helpers that start `start_rows` rows
    late (HELPER_START_ROWS when spawned, 0 when forked): biggest split first, each to whoever would
    finish first (10 % ultrachat scale)."""
    import ftctl.data.prepare as module

    late = module.HELPER_START_ROWS
    ten_pc = {"train_sft": 20_786, "test_sft": 2_311, "train_gen": 25_603, "test_gen": 2_830}
    # spawned: 25.6k + 2.3k rows here, 20.8k + 2.8k in the helper
    assert module._shares(ten_pc, 1, late) == (["train_gen", "test_sft"], ["train_sft", "test_gen"])
    # forked, it starts at once: 25.6k here, 25.9k there
    assert module._shares(ten_pc, 1, 0) == (["train_gen"], ["train_sft", "test_gen", "test_sft"])
    # a spawned helper is worth its start only when this process would otherwise still be busy
    assert module._shares({"a": 9_000, "b": 1_000}, 1, late) == (["a"], ["b"])
    assert module._shares({"a": 3_000, "b": 1_000}, 1, late) == (["a", "b"], [])
    assert module._shares({"a": 3_000, "b": 1_000}, 1, 0) == (["a"], ["b"])
    assert module._shares({"a": 10, "b": 10, "c": 10}, 0, late) == (["a", "b", "c"], [])


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("", "fork"),
        ("import threading; threading.Thread(target=threading.Event().wait, daemon=True).start()", "spawn"),
        ("import types; sys.modules['torch'] = types.ModuleType('torch')", "spawn"),
    ],
    ids=["alone", "another-thread", "torch-loaded"],
)
def test_helpers_are_forked_only_from_a_process_with_no_other_thread_and_no_torch(setup, expected):
    """A fork copies every lock as it stands, those another thread holds too (MLflow's, torch's pools):
    the helper is forked (it starts at once, pyarrow imported) only where no other Python thread runs and
    torch is not loaded; otherwise spawned."""
    code = f"import sys, pyarrow; {setup}\nfrom ftctl.data import prepare as p; print(p._helper_start()[0])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == (expected if sys.platform == "linux" else "spawn")
