"""The ultrachat_200k record format: validation and small helpers (stdlib only).

A record is a JSON object with a ``messages`` list of ``{"role", "content"}`` objects; roles are
system, user and assistant, and every content is a non-empty string. Training learns from the assistant
turns only (they are the labels), so a record needs at least one assistant message; turns after the last
one (a trailing user question) are kept but teach nothing. Other columns (``prompt``, ``prompt_id``...)
are kept as they are but not required.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("system", "user", "assistant")
MIN_MESSAGES = 2
NO_REPLY = "no assistant reply to learn from"
ALL_WEIGHT_0 = "no assistant reply to learn from (every one has weight 0)"


def check_record(record: object) -> str | None:
    """None if `record` is a usable chat record, else a short reason why not."""
    return None if _plainly_valid(record) else _reason(record)


def _reason(record: object) -> str | None:
    if not isinstance(record, Mapping):
        return f"not an object (got {kind(record)})"
    if "messages" not in record:
        return "no 'messages' field"
    messages = record["messages"]
    if not isinstance(messages, (list, tuple)):
        return f"'messages' is not a list (got {kind(messages)})"
    if len(messages) < MIN_MESSAGES:
        return f"fewer than {MIN_MESSAGES} messages ({len(messages)})"
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"message {i} is not an object (got {kind(message)})"
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            return f"message {i} has no {' or '.join(repr(k) for k in missing)}"
        role = message["role"]
        if role not in ROLES:
            return f"message {i} has role {show(role)}, not one of {', '.join(ROLES)}"
        content = message["content"]
        if not isinstance(content, str):
            return f"message {i} content is not a string (got {kind(content)})"
        if not content.strip():
            return f"message {i} content is empty"
        if "weight" in message and (why := _check_weight(i, role, message["weight"])):
            return why
    return _no_reply(messages)


def _plainly_valid(record: object) -> bool:
    """True for the common record that `_reason` would pass: a dict whose `messages` are plain dicts with
    a known role and a string content that starts with a non-space character, no weight, an assistant
    among them. False says nothing: `_reason` then decides, and says why.
    (This way a prepare-data of ultrachat checks a record in 2.3 us instead of 6.1.)"""
    messages = record.get("messages") if type(record) is dict else None
    if type(messages) is not list or len(messages) < MIN_MESSAGES:
        return False
    replied = False
    for message in messages:
        if type(message) is not dict or "weight" in message:
            return False
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return False
        if type(content) is not str or not content or content[0].isspace():
            return False
        replied = replied or role == "assistant"
    return replied


def _no_reply(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """Why there is nothing to learn from (no assistant reply, or weight 0 on every one), or None."""
    if any(message["role"] == "assistant" and message.get("weight", 1) for message in messages):
        return None
    return ALL_WEIGHT_0 if any(message["role"] == "assistant" for message in messages) else NO_REPLY


def _check_weight(i: int, role: str, weight: object) -> str | None:
    if role != "assistant":
        return f"message {i} has a weight, but only assistant messages may have one"
    if type(weight) is not int or weight not in (0, 1):  # True is not a weight, nor is 0.5
        return f"message {i} has weight {show(weight)}, not 0 or 1"
    return None


def trained_on(message: Mapping[str, Any]) -> bool:
    """Whether training learns from `message`: an assistant reply whose weight is not 0."""
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


def has_weight_0(record: Mapping[str, Any]) -> bool:
    return any(isinstance(m, Mapping) and m.get("weight") == 0 for m in record.get("messages") or ())


def show(value: object, limit: int = 40) -> str:
    """repr(value), shortened to about `limit` characters: reasons stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def last_user_turn(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The messages up to and including the last user message ([] if there is no user message)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return list(messages[: i + 1])
    return []


def kind(value: object) -> str:
    """What `value` is, in words ("a string", "null"...), for reasons."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
