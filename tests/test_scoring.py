"""The backend-agnostic scoring helpers (ftctl.scoring)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftctl.errors import DataError, StageFailed
from ftctl.scoring import (
    DEFAULT_PARAMETERS,
    build_request,
    extract_conversations,
    parse_response,
    pick_conversation,
)


def test_build_request_shape() -> None:
    messages = [{"role": "user", "content": "hi"}]
    request = build_request(messages, DEFAULT_PARAMETERS)
    assert request == {
        "input_data": {"input_string": [messages], "parameters": DEFAULT_PARAMETERS},
        "params": {},
    }
    assert DEFAULT_PARAMETERS == {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}
    json.dumps(request)  # serializable as is


@pytest.mark.parametrize(
    "body",
    [
        '{"output": "hello"}',
        b'{"output": "hello"}',
        '"hello"',
        '[{"0": "hello"}]',
        '[{"output": "hello"}]',
        '{"output": ["hello", "second"]}',
        json.dumps(json.dumps([{"0": "hello"}])),  # encoded twice by the container
        json.dumps(json.dumps({"output": "hello"})),
    ],
)
def test_parse_response_shapes(body: str | bytes) -> None:
    assert parse_response(body) == "hello"


def test_parse_response_keeps_text_that_only_looks_like_json() -> None:
    assert parse_response(json.dumps("[not json")) == "[not json"
    assert parse_response(json.dumps("")) == ""


@pytest.mark.parametrize(
    "body",
    ["not json at all", '{"result": "x"}', "[]", "42", "null", '{"output": []}', '[{"1": "x"}]', b"\xff\xfe"],
)
def test_parse_response_garbage(body: str | bytes) -> None:
    with pytest.raises(StageFailed):
        parse_response(body)


def test_parse_response_excerpt_is_short() -> None:
    with pytest.raises(StageFailed) as info:
        parse_response(json.dumps({"unexpected": "x" * 5000}))
    assert len(str(info.value)) < 400


def _write_rows(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(count):
            row = {
                "prompt": f"question {i}",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": f"question {i}"},
                    {"role": "assistant", "content": f"answer {i}"},
                    {"role": "user", "content": f"follow-up {i}"},
                    {"role": "assistant", "content": f"second answer {i}"},
                ],
            }
            fh.write(json.dumps(row) + "\n")


def test_pick_conversation_is_seeded_and_ends_with_user(tmp_path: Path) -> None:
    path = tmp_path / "test_gen.jsonl"
    _write_rows(path, 50)
    first = pick_conversation(path, seed=7)
    assert pick_conversation(path, seed=7) == first
    picks = {pick_conversation(path, seed=s)[0] for s in range(20)}
    assert len(picks) > 1  # the seed matters
    line, messages = first
    assert 1 <= line <= 50
    assert messages[-1] == {"role": "user", "content": f"follow-up {line - 1}"}
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]


def test_pick_conversation_skips_unusable_rows(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    good = {"messages": [{"role": "user", "content": "only one"}, {"role": "assistant", "content": "x"}]}
    path.write_text(
        "\n".join(
            [
                "not json",
                json.dumps({"messages": [{"role": "assistant", "content": "no user turn"}]}),
                "",
                json.dumps(good),
                json.dumps([1, 2]),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    for seed in range(5):
        assert pick_conversation(path, seed) == (4, [{"role": "user", "content": "only one"}])


def test_pick_conversation_without_usable_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n{}\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.jsonl"):
        pick_conversation(path, 0)
    with pytest.raises(DataError, match="missing.jsonl"):
        pick_conversation(tmp_path / "missing.jsonl", 0)


def test_extract_conversations_shapes() -> None:
    conv = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert extract_conversations({"input_string": [conv]}) == [conv]
    assert extract_conversations({"input_string": conv}) == [conv]  # a flat list of messages
    assert extract_conversations({"input_string": [conv, conv[1:]]}) == [conv, conv[1:]]
    # extra keys on a message are dropped
    assert extract_conversations({"input_string": [{"role": "user", "content": "u", "name": "x"}]}) == [
        [{"role": "user", "content": "u"}]
    ]


@pytest.mark.parametrize(
    ("input_data", "fragment"),
    [
        ([], "input_data"),
        ({}, "input_string"),
        ({"input_string": []}, "non-empty"),
        ({"input_string": "hello"}, "non-empty list"),
        ({"input_string": [[]]}, "input_string[0]"),
        ({"input_string": [[{"role": "robot", "content": "x"}]]}, "role"),
        ({"input_string": [[{"role": "user", "content": 3}]]}, "content"),
        ({"input_string": [{"role": "user", "content": "x"}, ["mixed"]]}, "list of conversations"),
        ({"input_string": [["not a message"]]}, "input_string[0][0]"),
    ],
)
def test_extract_conversations_rejects_bad_shapes(input_data: object, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        extract_conversations(input_data)  # type: ignore[arg-type]
    assert fragment in str(info.value)
