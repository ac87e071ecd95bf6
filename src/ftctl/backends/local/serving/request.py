"""Parsing and checking a scoring request (standard library only): the body's JSON, its conversations
and generation parameters, and the messages the endpoint answers with (no filesystem path shown to a
caller without the key)."""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.scoring import DEFAULT_PARAMETERS, extract_conversations

if TYPE_CHECKING:  # pragma: no cover
    pass

# name -> (kind, check, what the check means). Kinds: "bool", "int" (bools rejected), "number".
_PARAMETERS: dict[str, tuple[str, Any, str]] = {
    "temperature": ("number", lambda v: v >= 0, ">= 0"),
    "top_p": ("number", lambda v: 0 < v <= 1, "in (0, 1]"),
    "do_sample": ("bool", lambda v: True, ""),
    "max_new_tokens": ("int", lambda v: v >= 1, ">= 1"),
    "top_k": ("int", lambda v: v >= 0, ">= 0"),
    # Far outside this range the penalised scores overflow to inf and sampling fails.
    "repetition_penalty": ("number", lambda v: 1e-3 <= v <= 1e3, "in [0.001, 1000]"),
    "seed": ("int", lambda v: 0 <= v < 2**64, "in [0, 2**64)"),  # torch.manual_seed takes 64 bits
}
# At most this many conversations in one request: a body of thousands of tiny conversations would hold
# the model for minutes while every other request times out.
MAX_CONVERSATIONS = 64
# Below this, a temperature divides the logits into inf/nan: it is greedy decoding, as for 0.
MIN_SAMPLING_TEMPERATURE = 1e-5
# A prompt is refused without tokenizing it when it has more than this many characters per token of the
# model's context, times the length of the longest token: tokenizing megabytes takes seconds of the
# model thread, and no token covers more characters than its own text (the factor is slack for
# normalizers that merge characters).
PROMPT_CHARS_SLACK = 4
# Values quoted in error messages are cut to this many characters.
_SHOWN_CHARS = 80
# Unpaired UTF-16 surrogates: JSON's "\ud800" escapes decode to them, but they are not text (no
# tokenizer takes them, and no response containing one can be encoded as UTF-8).
_SURROGATE = re.compile("[\ud800-\udfff]")
# Absolute filesystem paths in a message (POSIX, ~, Windows), for what the endpoint shows without a key.
_ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/\\~>-])(?:~|[A-Za-z]:)?[/\\][^\s'"`,;()\[\]{}<>|]+""")


class BadRequest(ValueError):
    """The request is well-formed JSON but cannot be served as asked (answered with 400).

    `param` names the request field at fault, where there is one (OpenAI's error objects carry it).
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class GenerationTimeout(TimeoutError):
    """Generation was stopped because the request's deadline passed (answered with 504)."""


def show(value: Any) -> str:
    """`value` as JSON for an error message: at most _SHOWN_CHARS characters, ASCII (so a lone
    surrogate is escaped), and never an exception (deeply nested values, huge integers)."""
    try:
        text = json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond the float range
        return False


def _check_parameter(name: str, value: Any) -> Any:
    kind, check, meaning = _PARAMETERS[name]
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # NaN, Infinity and integers beyond the float range are not usable settings
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(value)
    if not ok:
        expected = {"bool": "true or false", "int": "an integer", "number": "a finite number"}[kind]
        raise BadRequest(f"parameter {name} must be {expected} (got {show(value)})", param=name)
    if not check(value):
        raise BadRequest(f"parameter {name} must be {meaning} (got {show(value)})", param=name)
    # torch takes a Python int beyond 64 bits as a scalar operand only after a float conversion
    return float(value) if kind == "number" else value


def normalize_parameters(parameters: Any, params: Any = None) -> dict[str, Any]:
    """Generation settings for a request: DEFAULT_PARAMETERS overridden by `parameters`.

    Unknown names raise BadRequest naming them. A `seed` may come from `parameters` or from the
    top-level `params` (other keys of `params` are ignored, as Azure's containers do).
    """
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise BadRequest('"input_data.parameters" must be an object', param="parameters")
    unknown = sorted(set(parameters) - set(_PARAMETERS))
    if unknown:
        names = ", ".join(name if len(name) <= _SHOWN_CHARS else show(name) for name in unknown)
        raise BadRequest(
            f"unknown parameter{'s' if len(unknown) > 1 else ''}: {names} "
            f"(supported: {', '.join(_PARAMETERS)})"
        )
    merged = dict(DEFAULT_PARAMETERS)
    for name, value in parameters.items():
        merged[name] = _check_parameter(name, value)
    if "seed" not in merged and isinstance(params, dict) and params.get("seed") is not None:
        merged["seed"] = _check_parameter("seed", params["seed"])
    return merged


def parse_json_body(raw: bytes) -> Any:
    """The decoded JSON of a request body; BadRequest if it is not JSON, nests too deeply, holds a
    number Python will not convert, or holds a string that is not valid Unicode (a lone surrogate)."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest("the request body is not valid JSON: nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except ValueError as exc:  # an integer literal longer than sys.get_int_max_str_digits()
        if "integer string conversion" in str(exc):
            raise BadRequest(
                f"the request body holds an integer of more than {sys.get_int_max_str_digits()} digits"
            ) from None
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    pending = [body]
    while pending:  # iterative: a body may nest as deep as the JSON parser allows
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii() and (found := _SURROGATE.search(item)):
                raise BadRequest(
                    f"the request body holds a string that is not valid Unicode: a lone surrogate "
                    f"(\\u{ord(found.group()):04x}); send text as UTF-8"
                )
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return body


def public_message(message: str, *paths: Path) -> str:
    """`message` without filesystem paths, for answers given without the key: each of `paths` (as
    given and resolved) becomes `<model dir>`, any other absolute path `<path>`."""
    known: set[str] = set()
    for path in paths:
        known.add(str(path))
        with contextlib.suppress(OSError, RuntimeError):
            known.add(str(Path(path).resolve()))
            known.add(str(Path(path).absolute()))
    for text in sorted((k for k in known if len(k) > 1), key=len, reverse=True):
        message = message.replace(text, "<model dir>")
    return _ABSOLUTE_PATH.sub("<path>", message)


def parse_score_body(body: Any) -> tuple[list[list[dict]], dict[str, Any], bool]:
    """(conversations, generation settings, whether input_string held several conversations)."""
    if not isinstance(body, dict):
        raise BadRequest('the request body must be a JSON object with "input_data"')
    if "input_data" not in body:
        raise BadRequest('the request body has no "input_data"')
    input_data = body["input_data"]
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest('"params" must be an object')
    try:
        conversations = extract_conversations(input_data)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    if len(conversations) > MAX_CONVERSATIONS:
        raise BadRequest(
            f"input_string holds {len(conversations)} conversations; at most {MAX_CONVERSATIONS} per request"
        )
    several = all(isinstance(item, list) for item in input_data["input_string"]) and len(conversations) > 1
    settings = normalize_parameters(input_data.get("parameters"), params)
    return conversations, settings, several
