from __future__ import annotations

import pytest

from ftctl.data.ultrachat import check_record, last_user_turn

U = {"role": "user", "content": "Hi there"}
A = {"role": "assistant", "content": "Hello! How can I help?"}
S = {"role": "system", "content": "You are a helpful assistant."}


@pytest.mark.parametrize(
    "record",
    [
        {"messages": [U, A]},
        {"messages": [S, U, A]},
        {"prompt": "Hi there", "prompt_id": "0" * 64, "messages": [U, A, U, A], "extra": 1},
        {"messages": (U, A)},
        {"messages": [U, {"role": "assistant", "content": "  x  "}]},
        {"messages": [U, A, U]},  # a trailing question: kept, though it teaches nothing
        {"messages": [A, U]},
        {"messages": [S, A]},
    ],
)
def test_valid_records(record):
    assert check_record(record) is None


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ([U, A], "not an object"),
        ("a string", "not an object"),
        (None, "not an object"),
        (42, "not an object"),
        ({}, "no 'messages'"),
        ({"prompt": "hi"}, "no 'messages'"),
        ({"messages": "hello"}, "not a list"),
        ({"messages": {"0": U}}, "not a list"),
        ({"messages": None}, "not a list"),
        ({"messages": []}, "fewer than 2 messages"),
        ({"messages": [U]}, "fewer than 2 messages"),
        ({"messages": [U, "hello"]}, "message 1 is not an object"),
        ({"messages": [U, None]}, "message 1 is not an object"),
        ({"messages": [{"content": "hi"}, A]}, "message 0 has no 'role'"),
        ({"messages": [U, {"role": "assistant"}]}, "message 1 has no 'content'"),
        ({"messages": [{}, A]}, "has no 'role' or 'content'"),
        ({"messages": [U, {"role": "bot", "content": "hi"}]}, "role 'bot'"),
        ({"messages": [{"role": "User", "content": "hi"}, A]}, "role 'User'"),
        ({"messages": [{"role": None, "content": "hi"}, A]}, "role None"),
        ({"messages": [U, {"role": "assistant", "content": 5}]}, "content is not a string"),
        ({"messages": [U, {"role": "assistant", "content": None}]}, "content is not a string"),
        ({"messages": [U, {"role": "assistant", "content": ["a"]}]}, "content is not a string"),
        ({"messages": [U, {"role": "assistant", "content": ""}]}, "content is empty"),
        ({"messages": [U, {"role": "assistant", "content": " \n\t "}]}, "content is empty"),
        ({"messages": [U, {"role": "assistant", "content": ""}, U, A]}, "message 1 content is empty"),
        ({"messages": [U, {"role": "user", "content": "  x  "}]}, "no assistant reply to learn from"),
        ({"messages": [S, U]}, "no assistant reply to learn from"),
        ({"messages": [S, U, U, U]}, "no assistant reply to learn from"),
        ({"messages": [{"role": "x" * 5000, "content": "hi"}, A]}, "message 0 has role 'xxxxx"),
        ({"messages": [{"role": "line\nbreak", "content": "hi"}, A]}, "role 'line\\nbreak'"),
    ],
)
def test_invalid_records(record, expected):
    reason = check_record(record)
    assert reason is not None
    assert expected in reason
    assert "\n" not in reason and len(reason) < 120


def test_last_user_turn():
    assert last_user_turn([U, A]) == [U]
    assert last_user_turn([S, U, A, U, A]) == [S, U, A, U]
    assert last_user_turn([S, U]) == [S, U]
    assert last_user_turn([S, A]) == []
    assert last_user_turn([]) == []
