"""Conversations as a chat model's tokenizer sees them: rendered with its chat template, tokenized, and
labelled for training (loss on the assistant replies only).

Backend-neutral: the local trainer tokenizes its training rows with `tokenize_conversation`, and both
backends' `ftctl plan` count tokens with it (`measure_conversations`): the local backend with the model
it trains, Azure ML with a tokenizer found on this machine (plan.tokenizer). transformers is imported
inside the functions that load a tokenizer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ftctl.data.ultrachat import trained_on
from ftctl.errors import DataError, UsageError
from ftctl.plan import Conversation, sample_indices

IGNORE_INDEX = -100
UNLIMITED = 1 << 40  # tokenize without truncating (plan counts truncation itself)
# What a model folder holds when it holds a tokenizer (a fast one, or the files to build one from).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    )


def common_prefix_len(a: list[int] | str, b: list[int] | str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_chat_tokenizer(model_path: Path) -> Any:
    """The tokenizer of a model folder as the trainer uses it: a pad token set, a chat template required."""
    from transformers import AutoTokenizer

    if Path(model_path).is_dir() and not any((Path(model_path) / name).is_file() for name in TOKENIZER_FILES):
        raise UsageError(f"{model_path}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if getattr(tokenizer, "chat_template", None) is None:
        raise UsageError(f"{model_path}: the tokenizer has no chat_template")
    return tokenizer


def _reply_start(tokenizer: Any, messages: list[dict[str, str]], i: int, full: str, search_from: int) -> int:
    """Where assistant turn i's reply starts in the full rendering (-1 when it cannot be found)."""
    try:
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - some templates refuse a conversation that starts here
        prompt = None
    if prompt is not None and full.startswith(prompt) and len(prompt) >= search_from:
        return len(prompt)
    # The template renders earlier turns differently once more follow (rare): find the reply.
    return full.find(str(messages[i].get("content", "")), search_from)


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, str]], max_seq_length: int
) -> tuple[list[int], list[int]] | None:
    """Tokenise a conversation with its chat template; labels are -100 except on assistant replies.

    Trainable tokens: each assistant turn's content and the end-of-turn token closing it (`<|end|>`
    for Phi-3; plus the eos token where a template appends one after the last turn), except turns with
    `"weight": 0` (the OpenAI fine-tuning format): those stay in the context, out of the loss. Returns
    (input_ids, labels) truncated to max_seq_length, or None when no trainable token is left.

    Works for any chat template: a reply starts where render(messages[:i], add_generation_prompt=True)
    ends (that rendering is a prefix of the full one), and ends where the tokens of
    render(messages[:i+1]) stop agreeing with the tokens of the full rendering, less trailing whitespace.
    Comparing tokens rather than characters keeps a turn from ending inside the next turn's marker.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("tokenize_conversation needs a fast tokenizer (it uses offset mappings)")
    trained = [trained_on(message) for message in messages]
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]  # the template sees no weight
    full = render(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    labels = [IGNORE_INDEX] * len(ids)
    search_from = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        start = _reply_start(tokenizer, messages, i, full, search_from)
        if not trained[i]:  # weight 0: context only; the next reply is searched for after this one
            search_from = max(search_from, start)
            continue
        if start < 0:
            continue
        common = common_prefix_len(encode(tokenizer, render(tokenizer, messages[: i + 1])), ids)
        end = offsets[common - 1][1] if common else 0
        while end > start and full[end - 1].isspace():
            end -= 1
        if end <= start:
            continue
        search_from = end
        for t in range(len(ids)):
            s, e = offsets[t]
            if e > s and s < end and e > start:
                labels[t] = ids[t]
    ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    if all(x == IGNORE_INDEX for x in labels):
        return None
    return ids, labels


MISSING_HINT = "prepare-data writes it: run `ftctl prepare-data` (or `ftctl run --to prepare-data`)"


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: no such data file", hint=MISSING_HINT)


def read_conversations(path: Path) -> Iterable[tuple[int, list[dict[str, Any]]]]:
    """Yield (line number, messages) from a jsonl file of {"messages": [{role, content}, ...]}; DataError
    naming the file and line for a line that is not UTF-8, not JSON, or not a conversation."""
    path = Path(path)
    _require_file(path)
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not valid UTF-8 (byte {exc.start + 1} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise DataError(
                    f'{path}:{lineno}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}'
                )
            yield lineno, [_message(m) for m in messages]


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """role and content, and `"weight": 0` where a message has it (no loss on that reply)."""
    found = {"role": message["role"], "content": message["content"]}
    if message.get("weight") == 0:
        found["weight"] = 0
    return found


def count_lines(path: Path) -> int:
    """Conversations in a jsonl file (its non-blank lines)."""
    _require_file(path)
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


def measure_conversations(
    tokenizer: Any, path: Path, max_seq_length: int, limit: int | None, stop: frozenset[int] = frozenset()
) -> tuple[int, list[Conversation]]:
    """(conversations in the file, the analysed ones: all, or `limit` evenly spaced), tokenized as the
    trainer does. `stop`: the tokens the endpoint stops on (does a reply's last label end the turn?)."""
    total = count_lines(path)
    wanted = set(sample_indices(total, limit))
    found: list[Conversation] = []
    for index, (lineno, messages) in enumerate(read_conversations(path)):
        if index not in wanted:
            continue
        try:
            tokenized = tokenize_conversation(tokenizer, messages, UNLIMITED)
        except Exception as exc:  # noqa: BLE001 - a template error names the line, as in training
            raise UsageError(f"{path}:{lineno}: cannot render with the chat template: {exc}") from None
        if tokenized is None:
            found.append(Conversation(len(encode(tokenizer, render(tokenizer, messages))), 0, 0))
            continue
        ids, labels = tokenized
        trained = [label for label in labels if label != IGNORE_INDEX]
        kept = sum(1 for label in labels[:max_seq_length] if label != IGNORE_INDEX)
        ends = not stop or any(label in stop for label in trained)
        found.append(Conversation(len(ids), len(trained), kept, ends))
    return total, found


def end_of_turn_ids(tokenizer: Any, end_token: str = "<|end|>") -> list[int]:
    """The tokens a reply ends its turn with: Phi-3's end-of-turn token (when the vocabulary has it) and
    the eos token."""
    ids = [tokenizer.get_vocab().get(end_token), tokenizer.eos_token_id]
    return [i for n, i in enumerate(ids) if isinstance(i, int) and i not in ids[:n]]


def stop_token_ids(tokenizer: Any, model_dir: Path) -> list[int]:
    """The tokens a reply stops on, as the endpoint stops: the end-of-turn token, the eos token and the
    model's generation config's eos ids (without loading the weights)."""
    from transformers import GenerationConfig

    from ftctl.models.layout import resolve_hf_dir

    ids = end_of_turn_ids(tokenizer)
    with contextlib.suppress(OSError):  # no generation_config.json
        value = GenerationConfig.from_pretrained(str(resolve_hf_dir(model_dir))).eos_token_id
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(token_id, int) and token_id not in ids:
                ids.append(token_id)
    return ids


def first_turn(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str] | None:
    """(the prompt before the first assistant reply, that reply)."""
    for i, message in enumerate(messages):
        if message["role"] == "assistant" and i > 0:
            return messages[:i], message["content"]
    return None
