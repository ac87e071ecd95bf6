"""The user's own data: the four formats (OpenAI chat, ShareGPT, Alpaca, prompt/completion) in JSONL,
JSON, CSV and parquet files, detected or forced, columns renamed; one file divided into train and test
(seeded); duplicates and overlap reported or dropped; weight 0 honoured in the loss mask. Then
`ftctl prepare-data --dataset my.jsonl` as a user runs it, for each format, good and malformed: what it
prints, what it records, and exit 2 naming file:line with nothing written."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from ftctl.data import formats
from ftctl.data.prepare import PrepareOptions, format_checks, format_dropped, held_out_count, prepare
from ftctl.data.ultrachat import ALL_WEIGHT_0, check_record
from ftctl.errors import DataError
from harness import Ftctl

QA = [(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(1, 31)]


def _chat(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def as_format(fmt: str, q: str, a: str) -> dict[str, Any]:
    return {
        "openai": {"messages": _chat(q, a)},
        "sharegpt": {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
        "alpaca": {"instruction": q, "input": "", "output": a},
        "prompt-completion": {"prompt": q, "completion": a},
    }[fmt]


def write(path: Path, records: list[Any]) -> Path:
    """`records` as the file type `path` names: JSON lines, a JSON array, CSV (list columns as JSON) or
    parquet."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    elif path.suffix == ".csv":
        columns = list(dict.fromkeys(k for r in records for k in r))
        with path.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(columns)
            for r in records:
                out.writerow([json.dumps(r[c]) if isinstance(r[c], list) else r[c] for c in columns])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_every_format_in_every_file_type_becomes_ultrachat_records(tmp_path, fmt, suffix):
    src = write(tmp_path / f"mine{suffix}", [as_format(fmt, q, a) for q, a in QA])
    out = tmp_path / "out"
    said: list[str] = []
    report = prepare(str(src), out, progress=said.append)
    assert report.source_kind == "file" and report.divided == "mine" and report.checked
    train, test = report.splits
    assert (train.name, test.name) == ("train_sft", "test_sft")
    assert (train.format, train.detected_at) == (fmt, 1 if suffix in (".jsonl", ".parquet") else 2)
    assert (train.rows_read, train.rows_written, test.rows_written) == (30, 27, 3)
    written = lines(out / "train_sft.jsonl") + lines(out / "test_sft.jsonl")
    assert sorted(r["messages"][0]["content"] for r in written) == sorted(q for q, _ in QA)
    assert all(
        r == {"messages": _chat(*QA[int(r["messages"][0]["content"].split()[2]) - 1])} for r in written
    )
    assert said == [f"{src}: 30 records, 0 dropped: train_sft 27, test_sft 3 (10% held out, seed 0)"]


def test_the_split_is_seeded_and_sized_by_test_pc(tmp_path):
    src = write(tmp_path / "mine.jsonl", [as_format("openai", q, a) for q, a in QA])

    def held_out(name: str, **options: Any) -> list[str]:
        prepare(str(src), tmp_path / name, PrepareOptions(**options))
        return [r["messages"][0]["content"] for r in lines(tmp_path / name / "test_sft.jsonl")]

    first = held_out("a")
    assert held_out("b") == first  # the same seed, the same records
    assert held_out("c", seed=7) != first
    assert len(held_out("d", test_pc=20)) == 6
    # In their order in the file.
    assert first == sorted(first, key=lambda q: int(q.split()[2]))
    report = prepare(str(src), tmp_path / "e", PrepareOptions(test_pc=0))
    assert [s.name for s in report.splits] == ["train_sft"] and report.splits[0].rows_written == 30
    assert [held_out_count(n, 10) for n in (0, 1, 2, 5, 14, 15, 30)] == [0, 0, 1, 1, 1, 2, 3]
    assert held_out_count(3, 99) == 2  # never all


def test_a_system_field_history_and_input_in_alpaca(tmp_path):
    record = {
        "instruction": "Translate.",
        "input": "chat",
        "output": "cat",
        "system": "You translate French.",
        "history": [["Bonjour?", "Hello?"]],
    }
    assert formats.from_alpaca(record) == {
        "messages": [
            {"role": "system", "content": "You translate French."},
            {"role": "user", "content": "Bonjour?"},
            {"role": "assistant", "content": "Hello?"},
            {"role": "user", "content": "Translate.\n\nchat"},
            {"role": "assistant", "content": "cat"},
        ]
    }


def test_sharegpt_speakers_and_role_content_turns():
    turns = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi?"},
        {"from": "gpt", "value": "Hi."},
    ]
    assert [m["role"] for m in formats.from_sharegpt({"conversations": turns})["messages"]] == [
        "system",
        "user",
        "assistant",
    ]
    role_content = {"conversations": _chat("Hi?", "Hi.")}
    assert formats.from_sharegpt(role_content) == {"messages": _chat("Hi?", "Hi.")}
    assert formats.from_sharegpt({"conversations": [{"from": "tool", "value": "x"}]}) == (
        "turn 0 of 'conversations' is from 'tool', not human, gpt or system"
    )


def test_columns_rename_and_a_forced_format(tmp_path):
    rows = [{"question": q, "answer": a, "id": i} for i, (q, a) in enumerate(QA)]
    src = write(tmp_path / "mine.parquet", rows)
    options = PrepareOptions(columns={"prompt": "question", "completion": "answer"})
    report = prepare(str(src), tmp_path / "out", options)
    assert report.splits[0].format == "prompt-completion" and report.splits[0].rows_written == 27
    assert lines(tmp_path / "out" / "train_sft.jsonl")[0].keys() == {"messages"}
    # A mapped column that is not there: every record says which, and the run fails naming them.
    with pytest.raises(DataError) as info:
        prepare(str(src), tmp_path / "x", PrepareOptions(columns={"prompt": "q", "completion": "answer"}))
    assert f"{src}:1: no column 'q' (data.columns.prompt)" in str(info.value)
    # Forced: records are read as that format whatever their columns.
    forced = write(tmp_path / "forced.jsonl", [{"prompt": q, "completion": a, "messages": []} for q, a in QA])
    report = prepare(str(forced), tmp_path / "f", PrepareOptions(format="prompt-completion"))
    assert report.splits[0].format == "prompt-completion" and report.splits[0].detected_at is None
    assert report.splits[0].rows_written == 27


def test_a_folder_of_split_files_in_another_format_keeps_its_splits(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    write(folder / "train_sft.jsonl", [as_format("alpaca", q, a) for q, a in QA[:20]])
    write(folder / "test_sft.jsonl", [as_format("alpaca", q, a) for q, a in QA[15:]])
    report = prepare(str(folder), tmp_path / "out")
    assert report.divided is None and [s.rows_written for s in report.splits] == [15, 20]
    assert [s.format for s in report.splits] == ["alpaca", "alpaca"]
    # The five test records also in train are reported, and dropped with dedupe.
    test = report.split("test_sft")
    assert test.overlap == [(1, 16), (2, 17), (3, 18), (4, 19), (5, 20)]
    pairs = "test_sft.jsonl:1 = line 16, test_sft.jsonl:2 = line 17, test_sft.jsonl:3 = line 18"
    assert format_checks(report, dedupe=False) == [
        f"test_sft: 5 records also in the train split ({pairs}, ... (2 more)); kept: set data.dedupe=true "
        "to drop them"
    ]
    deduped = prepare(str(folder), tmp_path / "out", PrepareOptions(dedupe=True))
    assert deduped.split("test_sft").rows_written == 10
    assert "also in the train split (line 16; data.dedupe)" in deduped.split("test_sft").dropped[0].reason


def test_duplicates_in_one_file_are_reported_then_dropped(tmp_path):
    records = [as_format("sharegpt", q, a) for q, a in QA]
    records[9] = records[2]  # line 10 = line 3
    records[20] = records[2]  # line 21 = line 3
    src = write(tmp_path / "mine.jsonl", records)
    report = prepare(str(src), tmp_path / "out")
    train, test = report.splits
    assert train.duplicates == [(10, 3), (21, 3)] and train.rows_written + test.rows_written == 30
    assert format_checks(report, dedupe=False)[0].startswith(
        f"{src}: 2 exact duplicates ({src}:10 = line 3, {src}:21 = line 3); kept"
    )
    report = prepare(str(src), tmp_path / "out", PrepareOptions(dedupe=True))
    train, test = report.splits
    assert train.rows_written + test.rows_written == 28 and not test.overlap
    assert [d.line for d in train.dropped] == [10, 21]
    written = [
        r["messages"][0]["content"]
        for s in ("train_sft", "test_sft")
        for r in lines(tmp_path / "out" / f"{s}.jsonl")
    ]
    assert len(written) == len(set(written)) == 28


def test_overlap_within_one_file_is_reported_without_dedupe(tmp_path):
    records = [as_format("openai", q, a) for q, a in QA] * 2  # every record twice
    src = write(tmp_path / "twice.jsonl", records)
    report = prepare(str(src), tmp_path / "out")
    train, test = report.splits
    assert len(train.duplicates) == 30 and test.rows_written == 6
    assert len(test.overlap) >= 1  # a held-out record whose copy stayed in train
    assert all(line != other for line, other in test.overlap)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("array.json", '[\n {"prompt": "a", "completion": "b"},\n {"prompt": "c" "completion": "d"}\n]\n',
         "array.json:3: invalid JSON: Expecting ',' delimiter"),
        ("trailing.json", '[{"prompt": "a", "completion": "b"}] x',
         "trailing.json:1: invalid JSON: more text"),
        ("unclosed.json", '[\n{"prompt": "a", "completion": "b"}\n',
         "unclosed.json:3: invalid JSON: the array is not closed"),
        ("dupkey.json", '[\n{"prompt": "a", "prompt": "b", "completion": "c"}]',
         "dupkey.json:2: invalid JSON: duplicate key 'prompt'"),
        ("quote.csv", 'prompt,completion\na,b\n"unclosed,x\n', "quote.csv:3: not readable as CSV"),
        ("header.csv", "prompt,prompt\na,b\n", "header.csv:1: the header names 'prompt' twice"),
        ("latin1.csv", "prompt,completion\ncaf\xe9,b\n", "latin1.csv:2: not valid UTF-8"),
    ],
)  # fmt: skip
def test_a_file_that_cannot_be_read_is_refused_naming_its_line(tmp_path, name, content, message):
    src = tmp_path / name
    src.write_bytes(content.encode("latin-1" if "latin1" in name else "utf-8"))
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        prepare(str(src), out)
    assert str(info.value).startswith(f"{src.parent}/{message}")
    assert not out.exists()  # nothing half-written


def test_bad_records_are_dropped_by_line_and_a_file_of_them_is_refused(tmp_path):
    records: list[Any] = [as_format("alpaca", q, a) for q, a in QA]
    records[3] = {"instruction": "x", "input": "", "output": "  "}
    records[5] = {"instruction": 3, "output": "y"}
    records[7] = {"conversations": []}
    src = write(tmp_path / "mine.json", records)
    report = prepare(str(src), tmp_path / "out")
    assert format_dropped(report) == [
        f"{src}:17: 'output' is empty",
        f"{src}:27: 'instruction' is not a string (got a number)",
        f"{src}:36: no 'instruction' field (the data is Alpaca)",
    ]
    # No record in any format: the run fails naming the lines and the formats it reads.
    bad = write(tmp_path / "bad.csv", [{"question": q, "answer": a} for q, a in QA])
    with pytest.raises(DataError) as info:
        prepare(str(bad), tmp_path / "out2")
    assert f"{bad}: only 0 valid training rows (10% held out for test_sft) (30 read, 30 dropped)" in str(
        info.value
    )
    assert f"{bad}:2: no 'messages' field" in str(info.value)
    assert "data.columns" in str(info.value.hint) and "'prompt' and 'completion'" in str(info.value.hint)
    assert not (tmp_path / "out2").exists()


def test_csv_cells_hold_lists_as_json(tmp_path):
    src = tmp_path / "chat.csv"
    rows = [{"messages": _chat(q, a), "id": str(i)} for i, (q, a) in enumerate(QA)]
    write(src, rows)
    with src.open("a", encoding="utf-8") as fh:
        fh.write('"[not json",31\n')
    report = prepare(str(src), tmp_path / "out")
    assert report.splits[0].format == "openai"
    assert format_dropped(report) == [f"{src}:32: column 'messages' is not a JSON list (Expecting value)"]
    assert lines(tmp_path / "out" / "train_sft.jsonl")[0]["messages"][0]["role"] == "user"


# --- weight -------------------------------------------------------------------------------------


def _weighted(weight: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Bad answer.", "weight": weight},
            {"role": "user", "content": "Again?"},
            {"role": "assistant", "content": "Good answer."},
        ]
    }


def test_weight_is_0_or_1_on_assistant_messages():
    assert check_record(_weighted(0)) is None and check_record(_weighted(1)) is None
    assert check_record(_weighted(0.5)) == "message 1 has weight 0.5, not 0 or 1"
    assert check_record(_weighted(True)) == "message 1 has weight True, not 0 or 1"
    on_user = {
        "messages": [{"role": "user", "content": "x", "weight": 1}, {"role": "assistant", "content": "y"}]
    }
    assert check_record(on_user) == "message 0 has a weight, but only assistant messages may have one"
    none_left = {
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]
    }
    assert check_record(none_left) == ALL_WEIGHT_0


def test_weight_0_is_kept_where_honoured_and_refused_where_not(tmp_path):
    records = [{"messages": _chat(q, a)} for q, a in QA]
    records[4] = _weighted(0)
    src = write(tmp_path / "mine.jsonl", records)
    prepare(str(src), tmp_path / "out")
    written = lines(tmp_path / "out" / "train_sft.jsonl") + lines(tmp_path / "out" / "test_sft.jsonl")
    assert [m.get("weight") for r in written for m in r["messages"] if "weight" in m] == [0]
    out = tmp_path / "refused"
    with pytest.raises(DataError, match=rf"^{src}:5: an assistant message has weight 0, and this backend"):
        prepare(str(src), out, PrepareOptions(weights=False))
    assert not out.exists()


def test_weight_0_replies_are_context_not_labels():
    from transformers import AutoTokenizer

    from ftctl.data.chat_tokens import IGNORE_INDEX, tokenize_conversation
    from ftctl.models.layout import shipped_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(shipped_model_dir()))
    weighted, plain = _weighted(0)["messages"], _weighted(1)["messages"]
    ids_0, labels_0 = tokenize_conversation(tokenizer, weighted, 512)
    ids_1, labels_1 = tokenize_conversation(tokenizer, plain, 512)
    assert ids_0 == ids_1  # the template renders the same conversation: the weight is not text
    trained_0 = tokenizer.decode(
        [t for t, label in zip(ids_0, labels_0, strict=True) if label != IGNORE_INDEX]
    )
    trained_1 = tokenizer.decode(
        [t for t, label in zip(ids_1, labels_1, strict=True) if label != IGNORE_INDEX]
    )
    assert "Bad answer." in trained_1 and "Good answer." in trained_1
    assert "Bad answer." not in trained_0 and "Good answer." in trained_0


def test_read_conversations_keeps_weight_0(tmp_path):
    from ftctl.data.chat_tokens import read_conversations

    path = write(tmp_path / "w.jsonl", [_weighted(0), _weighted(1)])
    found = [messages for _, messages in read_conversations(path)]
    assert found[0][1] == {"role": "assistant", "content": "Bad answer.", "weight": 0}
    assert found[1][1] == {"role": "assistant", "content": "Bad answer."}


# --- ftctl prepare-data --dataset FILE ---------------------------------------------------------


FORMATS = {
    "openai": "OpenAI chat (messages)",
    "sharegpt": "ShareGPT (conversations)",
    "alpaca": "Alpaca (instruction/input/output)",
    "prompt-completion": "prompt/completion",
}


@pytest.fixture
def ws(prepared_ws: Ftctl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Ftctl:
    """A copy of the session's prepared workspace (authenticated, the sample prepared), its folder the
    current one (where the user's file is)."""
    copy = prepared_ws.copy(tmp_path / "ws")
    monkeypatch.chdir(copy.root)
    return copy


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_prepare_data_on_a_file_of_each_format(ws: Ftctl, fmt: str) -> None:
    src = write(ws.root / "my.jsonl", [as_format(fmt, q, a) for q, a in QA])
    result = ws("prepare-data", "--dataset", "my.jsonl")
    assert "my.jsonl: 30 records, 0 dropped: train_sft 27, test_sft 3 (10% held out, seed 0)" in result.stderr
    assert f"format: {FORMATS[fmt]}, detected at my.jsonl:1" in result.stderr
    assert "score samples test_sft (there is no 'test_gen' split)" in result.stderr
    outputs = ws.outputs("prepare-data")
    assert outputs["source_kind"] == "file" and outputs["divided"] == {
        "split": "my",
        "test_pc": 10.0,
        "seed": 0,
    }
    assert {name: (f["rows"], f["format"], f["duplicates"]) for name, f in outputs["files"].items()} == {
        "train_sft": (27, fmt, 0),
        "test_sft": (3, fmt, 0),
    }
    first = json.loads((ws.workspace / "data" / "train_sft.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    # The file is an input of the stage: changing it makes prepare-data stale.
    assert ws.status()["prepare-data"]["stale"] is False
    src.write_text(src.read_text() + json.dumps(as_format(fmt, "One more?", "Yes.")) + "\n")
    assert ws.status()["prepare-data"]["stale_reason"] == "dataset changed"


def test_options_are_settings_and_duplicates_are_reported_then_dropped(ws: Ftctl) -> None:
    records = [as_format("alpaca", q, a) for q, a in QA]
    records[5] = records[1]
    write(ws.root / "my.csv", records)
    kept = ws("prepare-data", "--dataset", "my.csv", "--test-pc", "20")
    assert "train_sft 24, test_sft 6 (20% held out, seed 0)" in kept.stderr
    assert "my.csv: 1 exact duplicates (my.csv:7 = line 3); kept: set data.dedupe=true" in kept.stderr
    dropped = ws("prepare-data", "--dedupe")
    assert "my.csv: 30 records, 1 dropped: train_sft 23, test_sft 6" in dropped.stderr
    assert "dropped my.csv:7: exact duplicate of line 3 (data.dedupe)" in dropped.stderr
    assert "20" in ws("config", "show", "data.test_pc").stdout
    assert "true" in ws("config", "show", "data.dedupe").stdout


def weight_2(i: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a", "weight": 2}]
    }


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("bad.jsonl", "\n".join(["{oops"] * 12) + "\n",
         ["bad.jsonl: only 0 valid training rows", "bad.jsonl:1: invalid JSON"]),
        ("bad.json", '[\n{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n]',
         ["bad.json:3: invalid JSON: expected ',' or ']'"]),
        ("bad.csv", "instruction,output\n" + "".join(f"q{i},\n" for i in range(12)),
         ["bad.csv: only 0 valid training rows", "bad.csv:2: 'output' is empty"]),
        ("keys.jsonl", "".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(12)),
         ["keys.jsonl: only 0 valid training rows", "keys.jsonl:1: no 'messages' field", "data.columns"]),
        ("weights.jsonl", "".join(json.dumps(weight_2(i)) + "\n" for i in range(12)),
         ["weights.jsonl:1: message 1 has weight 2, not 0 or 1"]),
    ],
)  # fmt: skip
def test_a_malformed_file_is_exit_2_naming_file_and_line(
    ws: Ftctl, name: str, content: str, fragments: list[str]
) -> None:
    (ws.root / name).write_text(content, encoding="utf-8")
    data = ws.workspace / "data"
    before = {path.name: path.read_bytes() for path in data.iterdir()}
    result = ws("prepare-data", "--dataset", name, code=2)
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    # The sample's prepared files are as they were: nothing half-written, no temp file left.
    assert {path.name: path.read_bytes() for path in data.iterdir()} == before
    assert ws.record("prepare-data")["status"] == "failed"


def test_a_forced_format_and_columns_from_the_config(ws: Ftctl) -> None:
    write(ws.root / "qa.parquet", [{"q": q, "a": a} for q, a in QA])
    ws.settings += ["data.columns.prompt=q", "data.columns.completion=a"]
    result = ws("prepare-data", "--dataset", "qa.parquet")
    assert "format: prompt/completion, detected at qa.parquet:1" in result.stderr
    refused = ws("--set", "data.columns.nope=q", "prepare-data", code=2)
    assert "data.columns" in refused.stderr and "unknown column 'nope'" in refused.stderr
    forced = ws("prepare-data", "--format", "sharegpt", code=2)
    assert "qa.parquet:1: no 'conversations' field (the data is ShareGPT)" in forced.stderr


def test_dry_run_on_azure_says_the_file_is_divided(ftctl: Ftctl, tmp_path: Path) -> None:
    pytest.importorskip("azure.ai.ml")
    write(ftctl.root / "my.jsonl", [as_format("openai", q, a) for q, a in QA])
    result = ftctl(
        "--backend", "azureml", "--set", "model.name=Phi-4", "--set", "compute.name=gpu",
        "prepare-data", "--dataset", "my.jsonl", "--dry-run",
    )  # fmt: skip
    assert "divides: 10% of its valid records to test_sft (seed 0), the rest to train_sft" in result.stdout
    assert "test_gen" not in result.stdout


@pytest.mark.parametrize("engine", ["arrow", "datasets"])
def test_a_one_split_hub_dataset_with_a_column_mapping_is_divided(tmp_path, engine):
    """A hub dataset of question/answer columns with only a `train` split, read as the hub reads it
    (`datasets`, as for a hub id) and with pyarrow: mapped, converted, divided; its split name kept in
    the lines it reports."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "hub" / "data").mkdir(parents=True)
    rows = [{"question": q, "answer": a} for q, a in QA] + [{"question": "", "answer": "x"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    options = PrepareOptions(columns={"prompt": "question", "completion": "answer"}, engine=engine)
    report = prepare(str(tmp_path / "hub"), tmp_path / "out", options)
    assert report.source_kind == "hub-layout" and report.divided == "train" and report.checked
    assert [(s.name, s.rows_written, s.format) for s in report.splits] == [
        ("train_sft", 27, "prompt-completion"),
        ("test_sft", 3, "prompt-completion"),
    ]
    assert format_dropped(report) == ["train:31: 'prompt' is empty"]
