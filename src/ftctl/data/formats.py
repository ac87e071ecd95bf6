"""The chat data formats prepare-data reads, and their conversion to the record the rest of ftctl uses
(ultrachat_200k's: ``{"messages": [{"role", "content"}, ...]}``, see ftctl.data.ultrachat). Stdlib only.

- ``openai``: ``{"messages": [{"role", "content", "weight"?}, ...]}``, the OpenAI / Azure OpenAI
  fine-tuning chat format; ultrachat_200k is this format with more columns. Kept as it is.
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}`` (turns
  written ``{"role", "content"}`` are read too).
- ``alpaca``: ``{"instruction", "input"?, "output", "system"?, "history"?}``: the user turn is the
  instruction, then a blank line and the input when there is one; ``history`` holds earlier
  ``[user, assistant]`` pairs.
- ``prompt-completion``: ``{"prompt", "completion"}``: one user turn, one assistant reply.

`rename` applies ``data.columns`` first (``{"instruction": "question"}``: the column ``question``
holds the instruction), so a hub dataset or file with its own column names reads as one of these.
A converter returns the new record, or a one-line reason why the record cannot be one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from ftctl.data.ultrachat import kind, show

AUTO = "auto"
OPENAI = "openai"
SHAREGPT = "sharegpt"
ALPACA = "alpaca"
PROMPT_COMPLETION = "prompt-completion"
FORMATS = (OPENAI, SHAREGPT, ALPACA, PROMPT_COMPLETION)
SHORT = {
    OPENAI: "OpenAI chat",
    SHAREGPT: "ShareGPT",
    ALPACA: "Alpaca",
    PROMPT_COMPLETION: "prompt/completion",
}
NAMES = {
    OPENAI: "OpenAI chat (messages)",
    SHAREGPT: "ShareGPT (conversations)",
    ALPACA: "Alpaca (instruction/input/output)",
    PROMPT_COMPLETION: "prompt/completion",
}
# The columns of each format, required ones first.
COLUMNS = {
    OPENAI: ("messages",),
    SHAREGPT: ("conversations",),
    ALPACA: ("instruction", "output", "input", "system", "history"),
    PROMPT_COMPLETION: ("prompt", "completion"),
}
OPTIONAL = frozenset({"input", "system", "history"})
COLUMN_NAMES = tuple(sorted({column for columns in COLUMNS.values() for column in columns}))
EXPECTED = (
    "a 'messages' list (OpenAI chat), 'conversations' (ShareGPT), 'instruction' and 'output' (Alpaca), "
    "or 'prompt' and 'completion'"
)
# Columns that hold a list: a CSV cell holds it as JSON text.
LIST_COLUMNS = ("messages", "conversations", "history")

Converted = dict[str, Any] | str  # the record, or why it cannot be one


def detect(record: Any) -> str | None:
    """The format `record` is written in (by its keys), or None."""
    if not isinstance(record, Mapping):
        return None
    if "messages" in record:
        return OPENAI
    if "conversations" in record:
        return SHAREGPT
    if "instruction" in record and "output" in record:
        return ALPACA
    if "prompt" in record and "completion" in record:
        return PROMPT_COMPLETION
    return None


def rename(record: Any, columns: Mapping[str, str]) -> Any:
    """`record` with its columns renamed as data.columns says (format column -> the record's column); a
    reason when a required one is missing. Anything but an object is returned as it is."""
    if not isinstance(record, Mapping):
        return record
    out = dict(record)
    for field, column in columns.items():
        if column in record:
            value = out.pop(column)
            out[field] = value
        elif field not in OPTIONAL:
            return f"no column {show(column)} (data.columns.{field})"
    return out


def decode_lists(record: dict[str, Any]) -> Converted:
    """The list columns of a CSV row (JSON text in a cell) decoded."""
    for column in LIST_COLUMNS:
        value = record.get(column)
        if isinstance(value, str):
            if not value.strip() and column == "history":
                record[column] = []
                continue
            try:
                record[column] = json.loads(value)
            except ValueError as exc:
                return f"column {column!r} is not a JSON list ({short_json_error(exc)})"
    return record


def short_json_error(exc: ValueError) -> str:
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)


def _missing(record: Any, fmt: str) -> str | None:
    """Why `record` is not a record of `fmt`: not an object, or a required column missing."""
    if not isinstance(record, Mapping):
        return f"not an object (got {kind(record)})"
    for column in COLUMNS[fmt]:
        if column not in OPTIONAL and column not in record:
            return f"no {column!r} field (the data is {SHORT[fmt]})"
    return None


def _text(record: Mapping[str, Any], column: str, required: bool = True) -> str | None:
    """Why `record[column]` is not usable text (None when it is)."""
    value = record.get(column)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        return f"{column!r} is not a string (got {kind(value)})"
    if required and not value.strip():
        return f"{column!r} is empty"
    return None


def from_openai(record: Any) -> Converted:
    return dict(record) if isinstance(record, Mapping) else f"not an object (got {kind(record)})"


_SPEAKERS = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


def from_sharegpt(record: Any) -> Converted:
    missing = _missing(record, SHAREGPT)
    if missing:
        return missing
    turns = record["conversations"]
    if not isinstance(turns, list):
        return f"'conversations' is not a list (got {kind(turns)})"
    messages: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            return f"turn {i} of 'conversations' is not an object (got {kind(turn)})"
        who_key, text_key = ("from", "value") if "from" in turn or "role" not in turn else ("role", "content")
        if who_key not in turn or text_key not in turn:
            return f"turn {i} of 'conversations' has no {who_key!r} or no {text_key!r}"
        who = turn[who_key]
        role = _SPEAKERS.get(who.lower()) if isinstance(who, str) else None
        if role is None:
            return f"turn {i} of 'conversations' is from {show(who)}, not human, gpt or system"
        message: dict[str, Any] = {"role": role, "content": turn[text_key]}
        if "weight" in turn:
            message["weight"] = turn["weight"]
        messages.append(message)
    return {"messages": messages}


def from_alpaca(record: Any) -> Converted:
    missing = _missing(record, ALPACA)
    if missing:
        return missing
    why = _text(record, "instruction") or _text(record, "output")
    why = why or _text(record, "input", required=False) or _text(record, "system", required=False)
    if why:
        return why
    messages: list[dict[str, Any]] = []
    system = record.get("system")
    if system and system.strip():
        messages.append({"role": "system", "content": system})
    history = record.get("history")
    if history is not None:
        if not isinstance(history, list):
            return f"'history' is not a list (got {kind(history)})"
        for i, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                return f"'history' item {i} is not a [user, assistant] pair"
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    instruction, extra = record["instruction"], record.get("input")
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    return {"messages": messages}


def from_prompt_completion(record: Any) -> Converted:
    why = _missing(record, PROMPT_COMPLETION) or _text(record, "prompt") or _text(record, "completion")
    if why:
        return why
    return {
        "messages": [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
    }


CONVERTERS: dict[str, Callable[[Any], Converted]] = {
    OPENAI: from_openai,
    SHAREGPT: from_sharegpt,
    ALPACA: from_alpaca,
    PROMPT_COMPLETION: from_prompt_completion,
}
