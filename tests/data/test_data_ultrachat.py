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


def _variants() -> list[object]:
    """Records near the common one, each changed in one way check_record looks at."""
    import itertools
    from collections import OrderedDict

    base = {
        "prompt": "p",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
    }
    contents = ["Yo", " Yo", "\u3000", " ", "", "\tx", None, 7, ["Yo"]]
    roles = ["assistant", "user", "system", "tool", None, "Assistant", 1]
    extras: list[dict[str, object]] = [{}, {"weight": 0}, {"weight": 1}, {"weight": True}, {"name": "n"}]
    out: list[object] = [
        base,
        None,
        [],
        "text",
        {"messages": None},
        {"prompt": "p"},
        {"messages": base["messages"][:1]},
    ]
    for content, role, extra in itertools.product(contents, roles, extras):
        out.append(
            {"messages": [{"role": "user", "content": "Hi"}, {"role": role, "content": content, **extra}]}
        )
    out.append({"messages": tuple(base["messages"])})
    out.append({"messages": [OrderedDict(m) for m in base["messages"]]})
    out.append(OrderedDict(base))
    out.append({"messages": [{"role": "user"}, {"content": "x"}]})
    out.append({"messages": [{"role": "user", "content": "Hi"}, "assistant"]})
    return out


def test_the_fast_check_agrees_with_the_full_one(monkeypatch) -> None:
    """check_record vouches for the common record quickly (ultrachat._plainly_valid); on every variant
    its answer, reason included, is the one the full checks give."""
    from ftctl.data import ultrachat

    records = _variants()
    fast = [ultrachat.check_record(r) for r in records]
    monkeypatch.setattr(ultrachat, "_plainly_valid", lambda record: False)
    full = [ultrachat.check_record(r) for r in records]
    assert fast == full
    assert fast.count(None) > 10 and len(set(fast)) > 8  # both kinds, many reasons
