"""Azure ML's scoring contract for chat models, shared by every backend (standard library only).

A request (the notebook's sample_score.json) looks like::

    {"input_data": {"input_string": [[{"role": "user", "content": "..."}]],
                    "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": true,
                                   "max_new_tokens": 200}},
     "params": {}}

Client side: `build_request`, `pick_conversation` (a sample from test_gen.jsonl) and `parse_response`
(the answer, whichever shape the container used). Server side: `extract_conversations`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ftctl.errors import DataError, StageFailed

DEFAULT_PARAMETERS: dict[str, Any] = {
    "temperature": 0.6,
    "top_p": 0.9,
    "do_sample": True,
    "max_new_tokens": 200,
}

ROLES = ("system", "user", "assistant")

_EXCERPT_CHARS = 200


def build_request(messages: list[dict], parameters: dict) -> dict:
    """The request body for one conversation, in the shape of the notebook's sample_score.json."""
    return {
        "input_data": {"input_string": [list(messages)], "parameters": dict(parameters)},
        "params": {},
    }


# --------------------------------------------------------------------------------------------------
# Picking a sample conversation


def _prompt_messages(line: str) -> list[dict] | None:
    """The messages of one JSONL row up to and including its last user turn; None if unusable."""
    line = line.strip()
    if not line:
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict):
        return None
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    last_user = None
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return None
        role, content = message.get("role"), message.get("content")
        if role not in ROLES or not isinstance(content, str):
            return None
        if role == "user":
            last_user = index
    if last_user is None:
        return None
    return [{"role": m["role"], "content": m["content"]} for m in messages[: last_user + 1]]


def expected_reply(jsonl_path: Path, line_number: int) -> str | None:
    """The dataset's reply to the last user turn of row `line_number` (None if it has none)."""
    with Path(jsonl_path).open(encoding="utf-8") as fh:
        line = next((text for number, text in enumerate(fh, start=1) if number == line_number), None)
    if line is None:
        return None
    try:
        messages = json.loads(line).get("messages") or []
    except (ValueError, AttributeError):
        return None
    last_user = max(
        (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"), default=None
    )
    if last_user is None:
        return None
    for message in messages[last_user + 1 :]:
        if (
            isinstance(message, dict)
            and message.get("role") == "assistant"
            and isinstance(message.get("content"), str)
        ):
            return str(message["content"])
    return None


def pick_conversation(jsonl_path: Path, seed: int) -> tuple[int, list[dict]]:
    """A seeded random usable row of a chat JSONL file (test_gen.jsonl), cut after its last user turn.

    Returns (1-based line number, messages). The file is read twice, line by line: once to count the
    usable rows, once to reach the chosen one, so a large file is never held in memory. A usable row is
    a JSON object whose `messages` is a list of {role, content} with at least one user turn.
    """
    path = Path(jsonl_path)
    try:
        with path.open(encoding="utf-8") as fh:
            usable = sum(1 for line in fh if _prompt_messages(line) is not None)
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from exc
    if usable == 0:
        raise DataError(
            f"{path}: no usable row (each line must be a JSON object whose `messages` holds "
            "{role, content} turns including at least one user turn)"
        )
    target = random.Random(seed).randrange(usable)
    seen = 0
    with path.open(encoding="utf-8") as fh:
        for line_number, line in enumerate(fh, start=1):
            messages = _prompt_messages(line)
            if messages is None:
                continue
            if seen == target:
                return line_number, messages
            seen += 1
    # The file shrank between the two passes.
    raise DataError(f"{path}: the file changed while it was being read")


# --------------------------------------------------------------------------------------------------
# Reading an answer


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."


def _chat_completion_text(value: dict[str, Any]) -> str | None:
    """The first choice's message of a chat completion ({"choices": [{"message": {"content": ...}}]}):
    what a serverless endpoint's /v1/chat/completions route answers (the OpenAI-compatible shape)."""
    choices = value.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message")
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    return None


def _text_from(value: Any) -> str | None:
    """The answer text from a decoded body, or None when the shape is not one we know."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        output = value.get("output")
        if isinstance(output, str):
            return output
        if isinstance(output, list) and output and isinstance(output[0], str):
            return output[0]
        return _chat_completion_text(value)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        first = value[0]
        for key in ("0", "output"):
            if isinstance(first.get(key), str):
                return first[key]
    return None


def parse_response(body: str | bytes) -> str:
    """The generated text from a scoring response, whatever shape the serving container answered.

    Accepted: {"output": "text"}, {"output": ["text", ...]} (the first), "text" (a bare JSON string),
    [{"0": "text"}], [{"output": "text"}] and a chat completion's first choice (a serverless endpoint).
    Some containers JSON-encode their answer twice (the body is a JSON string holding one of those
    shapes); that is unwrapped once. Anything else raises
    StageFailed quoting the start of the body.
    """
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StageFailed(
                f"the endpoint answered bytes that are not UTF-8: {_excerpt(repr(body))}"
            ) from exc
    else:
        text = body
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StageFailed(f"the endpoint answered something that is not JSON: {_excerpt(text)!r}") from exc
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                inner = json.loads(stripped)
            except json.JSONDecodeError:
                inner = None
            if isinstance(inner, (dict, list)):
                unwrapped = _text_from(inner)
                if unwrapped is not None:
                    return unwrapped
        return value
    result = _text_from(value)
    if result is None:
        raise StageFailed(
            f"unexpected response shape from the endpoint: {_excerpt(text)!r}",
            hint='expected {"output": "..."}, a JSON string, or [{"0": "..."}]',
        )
    return result


# --------------------------------------------------------------------------------------------------
# Server side


def _conversation(value: Any, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of messages")
    messages = []
    for index, message in enumerate(value):
        place = f"{where}[{index}]"
        if not isinstance(message, dict):
            raise ValueError(f'{place} must be an object with "role" and "content"')
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"{place}.role must be one of {', '.join(ROLES)} (got {role!r})")
        if not isinstance(content, str):
            raise ValueError(f"{place}.content must be a string")
        messages.append({"role": role, "content": content})
    return messages


def extract_conversations(input_data: dict) -> list[list[dict]]:
    """The conversations of a request's `input_data`.

    `input_string` is either a list of conversations (each a list of {role, content}) or one flat list
    of messages, which is taken as a single conversation. Raises ValueError naming what is wrong.
    """
    if not isinstance(input_data, dict):
        raise ValueError('"input_data" must be an object')
    if "input_string" not in input_data:
        raise ValueError('"input_data.input_string" is missing')
    items = input_data["input_string"]
    if not isinstance(items, list) or not items:
        raise ValueError('"input_data.input_string" must be a non-empty list')
    if all(isinstance(item, dict) for item in items):
        return [_conversation(items, "input_string")]
    if all(isinstance(item, list) for item in items):
        return [_conversation(item, f"input_string[{i}]") for i, item in enumerate(items)]
    raise ValueError(
        '"input_data.input_string" must be a list of conversations (lists of {"role", "content"}) '
        "or a single list of such messages"
    )
