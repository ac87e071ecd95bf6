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


def check_record(record: object) -> str | None:
    """None if `record` is a usable chat record, else a short reason why not."""
    if not isinstance(record, Mapping):
        return f"not an object (got {_kind(record)})"
    if "messages" not in record:
        return "no 'messages' field"
    messages = record["messages"]
    if not isinstance(messages, (list, tuple)):
        return f"'messages' is not a list (got {_kind(messages)})"
    if len(messages) < MIN_MESSAGES:
        return f"fewer than {MIN_MESSAGES} messages ({len(messages)})"
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            return f"message {i} is not an object (got {_kind(message)})"
        missing = [key for key in ("role", "content") if key not in message]
        if missing:
            return f"message {i} has no {' or '.join(repr(k) for k in missing)}"
        role = message["role"]
        if role not in ROLES:
            return f"message {i} has role {show(role)}, not one of {', '.join(ROLES)}"
        content = message["content"]
        if not isinstance(content, str):
            return f"message {i} content is not a string (got {_kind(content)})"
        if not content.strip():
            return f"message {i} content is empty"
    if not any(message["role"] == "assistant" for message in messages):
        return NO_REPLY
    return None


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


def _kind(value: object) -> str:
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
