"""Hostile records for prepare-data, called in-process (no workspace, no subprocess but one).

Every bad line sits at line 2 of a <split>.jsonl among 12 good ones. Each case is either dropped (its
line number and a short reason reported, like every other dropped row) or accepted sensibly (written as
one strict-JSON line that the trainer can read); never an exception other than DataError, never a
half-written output. A record that gives training nothing to learn from (no non-empty assistant message:
training uses assistant turns as labels) is dropped as "no assistant reply to learn from"; when every
training row is dropped, prepare-data fails with DataError (exit 2) naming the file and the first reasons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

import ftctl.data.sources as sources_module
from ftctl.data.prepare import PrepareOptions, format_dropped, prepare
from ftctl.errors import DataError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "download_dataset.py"
NO_REPLY = "no assistant reply to learn from"


def msg(role: Any, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


U, A, S = msg("user", "What is 2 + 2?"), msg("assistant", "2 + 2 = 4."), msg("system", "Be brief.")


def good(i: int) -> bytes:
    record = {"prompt_id": str(i), "messages": [msg("user", f"q{i}?"), msg("assistant", f"a{i}.")]}
    return json.dumps(record).encode()


def line(record: Any) -> bytes:
    return json.dumps(record).encode() + b"\n"


def raw(text: str) -> bytes:
    return text.encode() + b"\n"


@dataclass
class Case:
    name: str
    data: bytes  # the whole line 2, newline included
    reason: str | None  # dropped: a fragment of the reason; None: accepted
    check: Callable[[dict[str, Any]], bool] | None = None  # accepted: what the written record must satisfy


def content(i: int, expected: str) -> Callable[[dict[str, Any]], bool]:
    return lambda record: record["messages"][i]["content"] == expected


RECORD = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]'
CASES = [
    # --- nothing to learn from: dropped ---------------------------------------------------------
    Case("only-user-turns", line({"messages": [U, msg("user", "anyone?")]}), NO_REPLY),
    Case("system-and-user", line({"messages": [S, U]}), NO_REPLY),
    Case("system-user-user", line({"messages": [S, U, msg("user", "hello?")]}), NO_REPLY),
    Case("assistant-empty", line({"messages": [U, msg("assistant", "")]}), "message 1 content is empty"),
    Case("one-of-two-replies-empty", line({"messages": [U, msg("assistant", ""), U, A]}),
         "message 1 content is empty"),
    Case("assistant-whitespace", line({"messages": [U, msg("assistant", " \n\t\u3000")]}),
         "message 1 content is empty"),
    # --- roles and contents ----------------------------------------------------------------------
    Case("role-tool", line({"messages": [U, msg("tool", "{}"), A]}), "message 1 has role 'tool'"),
    Case("role-huge", line({"messages": [msg("x" * 10_000, "hi"), A]}), "message 0 has role 'xxx"),
    Case("role-not-a-string", line({"messages": [msg(["user"], "hi"), A]}), "message 0 has role ['user']"),
    Case("content-parts-list", line({"messages": [U, msg("assistant", [{"type": "text", "text": "4"}])]}),
         "message 1 content is not a string (got a list)"),
    Case("content-null", line({"messages": [U, msg("assistant", None)]}), "not a string (got null)"),
    Case("content-number", line({"messages": [U, msg("assistant", 4)]}), "not a string (got a number)"),
    # --- the JSON line itself ----------------------------------------------------------------------
    Case("line-is-array", raw("[1, 2]"), "not an object (got a list)"),
    Case("line-is-number", raw("42"), "not an object (got a number)"),
    Case("line-is-string", raw('"hello"'), "not an object (got a string)"),
    Case("line-is-null", raw("null"), "not an object (got null)"),
    Case("not-utf8", b'{"messages": "caf\xe9"}\n', "not valid UTF-8"),
    Case("surrogate-as-utf8-bytes", RECORD.replace('"q"', '"q\xed\xa0\x80"').encode("latin-1") + b"}\n",
         "not valid UTF-8"),
    Case("lone-surrogate-escape", raw(RECORD.replace('"q"', '"q\\ud800"') + "}"), "surrogate"),
    Case("nul-byte-raw", RECORD.replace('"q"', '"q\x00"').encode() + b"}\n", "invalid JSON"),
    Case("nul-byte-outside-strings", b"\x00" + RECORD.encode() + b"}\n", "invalid JSON"),
    Case("duplicate-role", raw(RECORD.replace('"content": "a"', '"content": "a", "role": "user"') + "}"),
         "duplicate key 'role'"),
    Case("duplicate-messages", raw(RECORD + ', "messages": []}'), "duplicate key 'messages'"),
    Case("nan", raw(RECORD + ', "score": NaN}'), "NaN"),
    Case("infinity", raw(RECORD + ', "score": -Infinity}'), "Infinity"),
    Case("huge-integer", raw(RECORD + ', "n": ' + "9" * 5000 + "}"), "too many digits"),
    Case("deeply-nested-extra-column", raw(RECORD + ', "x": ' + "[" * 300 + "]" * 300 + "}"), "nested"),
    Case("two-records-on-one-line", raw(RECORD + "}" + RECORD + "}"), "invalid JSON"),
    Case("truncated", raw(RECORD[:-10]), "invalid JSON"),
    # --- accepted, sensibly ------------------------------------------------------------------------
    Case("crlf", raw(RECORD + "}\r"), None, content(1, "a")),
    Case("bom-on-a-later-line", b"\xef\xbb\xbf" + raw(RECORD + "}"), None, content(1, "a")),
    Case("nul-escaped", raw(RECORD.replace('"q"', '"q\\u0000"') + "}"), None, content(0, "q\x00")),
    Case("line-separators-in-content", raw(RECORD.replace('"q"', '"q\u2028x\u0085y\\r\\nz"') + "}"),
         None, content(0, "q\u2028x\u0085y\r\nz")),
    Case("surrogate-pair-escape", raw(RECORD.replace('"q"', '"q\\ud83d\\ude00"') + "}"), None,
         content(0, "q\U0001f600")),
    Case("ends-with-a-user-turn", line({"messages": [U, A, msg("user", "thanks")]}), None,
         lambda r: len(r["messages"]) == 3),
    Case("two-replies", line({"messages": [U, A, msg("user", "more?"), msg("assistant", "4.")]}), None,
         lambda r: len(r["messages"]) == 4),
    Case("extra-message-keys", line({"messages": [U, {**A, "name": "bot", "weight": 1}]}), None,
         lambda r: r["messages"][1]["name"] == "bot"),
    Case("big-but-64-bit-integer", raw(RECORD + ', "n": 9223372036854775807}'), None,
         lambda r: r["n"] == 2**63 - 1),
]  # fmt: skip


def dataset(root: Path, lines: list[bytes], split: str = "train_sft") -> Path:
    folder = root / "src"
    folder.mkdir(exist_ok=True)
    (folder / f"{split}.jsonl").write_bytes(b"".join(lines))
    return folder


def with_line_2(data: bytes, total: int = 13) -> list[bytes]:
    return [data if n == 2 else good(n) + b"\n" for n in range(1, total + 1)]


def written(path: Path) -> list[dict[str, Any]]:
    """The output, read strictly: LF-separated lines, each one strict JSON (orjson: no NaN, valid UTF-8)."""
    data = path.read_bytes()
    assert data.endswith(b"\n") and b"\r" not in data
    return [orjson.loads(text) for text in data.split(b"\n")[:-1]]


def test_every_hostile_record_in_one_file(tmp_path: Path) -> None:
    """All the one-line cases at once, each on its own line after a good first one: every dropped case is
    reported at its own line number, every accepted one written, in order."""
    cases = [case for case in CASES if case.data.endswith(b"\n") and case.data.count(b"\n") == 1]
    src = dataset(tmp_path, [good(1) + b"\n", *(case.data for case in cases)])
    split = prepare(str(src), tmp_path / "out").split("train_sft")
    dropped = {d.line: d.reason for d in split.dropped}
    assert sorted(dropped) == [n for n, case in enumerate(cases, start=2) if case.reason is not None]
    for n, case in enumerate(cases, start=2):
        if case.reason is not None:
            assert case.reason in dropped[n], (case.name, dropped[n][:300])
    records = written(tmp_path / "out" / "train_sft.jsonl")
    accepted = [case for case in cases if case.reason is None]
    assert split.rows_read == len(cases) + 1 and split.rows_written == len(records) == len(accepted) + 1
    for case, record in zip(accepted, records[1:], strict=True):
        assert case.check is not None and case.check(record), (case.name, record)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_record(case: Case, tmp_path: Path) -> None:
    src = dataset(tmp_path, with_line_2(case.data))
    report = prepare(str(src), tmp_path / "out")
    split = report.split("train_sft")
    records = written(tmp_path / "out" / "train_sft.jsonl")
    assert split.rows_read == 13
    if case.reason is None:
        assert split.dropped == [], format_dropped(report)
        assert split.rows_written == len(records) == 13
        assert case.check is not None and case.check(records[1]), records[1]
    else:
        assert [d.line for d in split.dropped] == [2]
        reason = split.dropped[0].reason
        assert case.reason in reason, reason[:300]
        assert "\n" not in reason and len(reason) < 200, reason[:300]
        assert split.rows_written == len(records) == 12
        assert [r["prompt_id"] for r in records] == [str(n) for n in range(1, 14) if n != 2]
    for record in records:  # everything written has something to learn from
        replies = [m for m in record["messages"] if m["role"] == "assistant" and m["content"].strip()]
        assert replies, record
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train_sft.jsonl"]


def test_line_longer_than_the_limit_is_dropped_and_skipped(tmp_path: Path, monkeypatch) -> None:
    """An overlong line is dropped without being read whole; the lines after it keep their numbers."""
    monkeypatch.setattr(sources_module, "MAX_LINE_BYTES", 4096)
    long_line = line({"messages": [U, msg("assistant", "x" * 50_000)]})
    lines = with_line_2(long_line)
    lines.insert(5, good(99)[:-1] + b" " * 10_000 + b"}")  # the last line holds no newline
    src = dataset(tmp_path, [*lines[:5], *lines[6:], lines[5]])
    report = prepare(str(src), tmp_path / "out")
    split = report.split("train_sft")
    assert [(d.line, d.reason.split(" (")[0]) for d in split.dropped] == [
        (2, "line longer than 4096 bytes"),
        (14, "line longer than 4096 bytes"),
    ]
    assert f"({len(long_line) - 1} bytes)" in split.dropped[0].reason  # the newline not counted
    assert [r["prompt_id"] for r in written(tmp_path / "out" / "train_sft.jsonl")] == [
        str(n) for n in range(1, 14) if n != 2
    ]
    # The split_pc count pass sees the same lines: 50% of 14 is 7.
    report = prepare(str(src), tmp_path / "half", PrepareOptions(split_pc=50, min_train_rows=1))
    assert report.split("train_sft").rows_read == 7


def test_hidden_jsonl_files_are_not_splits(tmp_path: Path) -> None:
    """AppleDouble files (._train_sft.jsonl, left by copying from a Mac) and other dotfiles are ignored."""
    src = dataset(tmp_path, [good(n) + b"\n" for n in range(12)])
    (src / "._train_sft.jsonl").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (src / ".notes.jsonl").write_bytes(b"{}\n")
    report = prepare(str(src), tmp_path / "out")
    assert [s.name for s in report.splits] == ["train_sft"]


# --- every training row dropped: DataError (exit 2) naming the file and the first reasons -----------


def no_reply_rows(n: int = 12) -> list[bytes]:
    return [line({"prompt_id": str(i), "messages": [U, msg("user", f"still there {i}?")]}) for i in range(n)]


def test_all_rows_without_a_reply_is_a_data_error(tmp_path: Path) -> None:
    src = dataset(tmp_path, no_reply_rows())
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_sft.jsonl").write_bytes(b"earlier output\n")
    with pytest.raises(DataError) as info:
        prepare(str(src), out)
    message = info.value.message
    assert message.startswith(f"{src / 'train_sft.jsonl'}: only 0 valid training rows (12 read, 12 dropped)")
    details = message.splitlines()[1:]
    assert details[:5] == [f"  train_sft.jsonl:{n}: {NO_REPLY}" for n in range(1, 6)]
    assert details[5:] == ["  ... and 7 more"]
    assert sorted(p.name for p in out.iterdir()) == ["train_sft.jsonl"]
    assert (out / "train_sft.jsonl").read_bytes() == b"earlier output\n"


def test_all_rows_dropped_fails_even_with_min_train_rows_zero(tmp_path: Path) -> None:
    src = dataset(tmp_path, no_reply_rows(3))
    with pytest.raises(DataError, match="only 0 valid training rows") as info:
        prepare(str(src), tmp_path / "out", PrepareOptions(min_train_rows=0))
    assert f"train_sft.jsonl:1: {NO_REPLY}" in info.value.message
    assert not (tmp_path / "out").exists()


def test_all_rows_without_a_reply_in_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "hub"
    (folder / "data").mkdir(parents=True)
    rows = [{"messages": [U, msg("user", f"hello {i}?")]} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "train_sft-00000-of-00001.parquet")
    with pytest.raises(DataError) as info:
        prepare(str(folder), tmp_path / "out")
    assert f"{folder} split train_sft: only 0 valid training rows" in info.value.message
    assert f"train_sft:1: {NO_REPLY}" in info.value.message


def test_all_rows_without_a_reply_exits_2_from_the_script(tmp_path: Path) -> None:
    """The notebook's download-dataset.py (same code as `ftctl prepare-data`): exit 2, no traceback."""
    src = dataset(tmp_path, no_reply_rows())
    out = tmp_path / "out"
    argv = [sys.executable, str(SCRIPT), "--dataset", str(src), "--dataset_split_pc", "100"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*argv, "--download_dir", str(out)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {src / 'train_sft.jsonl'}: only 0 valid training rows")
    assert f"train_sft.jsonl:1: {NO_REPLY}" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()
