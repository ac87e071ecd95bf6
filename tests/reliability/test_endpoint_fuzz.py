"""Hostile input on the local endpoint: whatever a client sends, /score and /v1/chat/completions answer
2xx or 4xx, never 5xx, and every 4xx carries the route's error shape.

Property tests (hypothesis, derandomized: the same examples on every run) build request bodies out of
near-valid templates in which any field may be replaced by an odd JSON value: integers beyond int64
and beyond the float range, NaN and infinities, lone surrogates (as JSON escapes and as raw bytes),
deep nesting, strings of megabytes (within the body limit), wrong types everywhere, and out-of-range
generation settings. The app runs in-process (FastAPI's TestClient) on the shipped tiny Phi-3, so a
request costs milliseconds; every valid request asks for at most 3 new tokens. The cases these tests
found are kept below as plain examples.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from ftctl.backends.local.serving.app import MAX_BODY_BYTES, ServerOptions, create_app

TINY_MODEL = Path(__file__).resolve().parents[2] / "src" / "ftctl" / "resources" / "tiny-phi3"
KEY = "fuzz-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
MODEL_NAME = "ftctl-tiny-phi3:1"
SCORE, CHAT = "/score", "/v1/chat/completions"

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is deterministic
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(TINY_MODEL, key=KEY, options=ServerOptions(request_timeout_s=60, model_name=MODEL_NAME))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, test_client.get("/health/ready").text
            time.sleep(0.02)
        yield test_client


# --------------------------------------------------------------------------------------------------
# Strategies


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each drawn `weight` times in sum(weights)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


# Numbers at and beyond every boundary a parser or torch cares about.
EDGE_INTS = [0, -1, 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64 - 1, 2**64, 10**400]
numbers = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.sampled_from(EDGE_INTS),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.sampled_from([10**309, -(10**309), 10**1000]),  # integers beyond the float range
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-300, 5e-324, 1e308, -0.0, 1e-5, 0.999999, 1.000001]),
)
# Text: mostly ordinary, sometimes with lone surrogates (Cs), NUL, special tokens, bidi controls.
surrogate_texts = st.one_of(
    st.text(st.one_of(st.characters(), st.characters(categories=["Cs"])), min_size=1, max_size=12),
    st.sampled_from(["\ud800", "a\udfffb", "\udbff\udc00", "\udc80\udcff"]),
)
texts = weighted(
    (6, st.text(max_size=20)),
    (1, st.sampled_from(["\x00", "<|end|>", "<|assistant|>", "<|endoftext|>", "\u202e", "😀", ""])),
    (1, surrogate_texts),
)
# Megabyte strings: one character repeated (cheap to build), up to just under the body limit.
huge_texts = st.builds(
    lambda piece, n: piece * n,
    st.sampled_from(["a", "word ", "é", "😀", "<|end|>"]),
    st.sampled_from([10_000, 200_000, 1_000_000, 1_600_000]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)


def nested(depth: int) -> str:
    """JSON text nesting lists and objects `depth` deep (json.dumps itself stops near 1,000)."""
    return '{"a": [' * (depth // 2) + "1" + "]}" * (depth // 2)


# Nesting around the interpreter's recursion limit and far beyond it: a placeholder string that
# `encode` replaces with the nested JSON text.
DEEP = "@@deep:{}@@"
deep_values = st.sampled_from([50, 400, 900, 990, 1_000, 3_000, 100_000]).map(DEEP.format)
odd = st.one_of(json_values, deep_values, huge_texts)


def maybe(valid: st.SearchStrategy[Any], odds: int = 12) -> st.SearchStrategy[Any]:
    """Mostly the valid form, 1 in `odds` anything at all: most bodies get far into the checks."""
    return weighted((odds - 1, valid), (1, odd))


def message(roles: list[str]) -> st.SearchStrategy[Any]:
    contents = maybe(weighted((12, texts), (1, huge_texts)))
    return maybe(st.fixed_dictionaries({"role": maybe(st.sampled_from(roles)), "content": contents}))


score_message = message(["user", "system", "assistant"])
chat_message = message(["user", "system", "assistant", "developer"])
# max_new_tokens is either cheap (1-3) or invalid: a valid large value would only make the test slow.
new_tokens = weighted(
    (5, st.just(1)),
    (1, st.integers(min_value=2, max_value=3)),
    (1, st.integers(max_value=0)),
    (1, st.integers(min_value=2049)),  # beyond the tiny model's context
    (1, st.sampled_from([2**63, 2**64, 10**400, 2.5, 1.0, True, "3", None])),
    (1, st.floats(allow_nan=True, allow_infinity=True)),
)
# Valid but extreme settings (at the edge of their range, of int64, of float), else hostile numbers.
settings_values = {
    "temperature": st.one_of(
        st.floats(0, 1e308), st.sampled_from([0, 1e-300, 5e-324, 1e308, 2**63, 10**300])
    ),
    "top_p": st.one_of(st.floats(0, 1, exclude_min=True), st.sampled_from([1, 5e-324, 1e-300])),
    "top_k": st.one_of(st.integers(0, 50), st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, 10**30])),
    "do_sample": st.booleans(),
    "repetition_penalty": st.one_of(st.floats(1e-3, 1e3), st.sampled_from([1e-3, 1e3])),
    "seed": st.one_of(st.integers(0, 100), st.sampled_from([2**32, 2**63 - 1, 2**63, 2**64 - 1])),
}
setting = {name: weighted((7, values), (2, numbers), (1, odd)) for name, values in settings_values.items()}
parameters = maybe(
    weighted(
        (8, st.fixed_dictionaries({"max_new_tokens": new_tokens}, optional=setting)),
        (1, st.fixed_dictionaries({"max_new_tokens": new_tokens, "max_tokens": numbers})),  # unknown name
        (1, st.fixed_dictionaries({"max_new_tokens": new_tokens, "\ud800": numbers})),
    )
)
conversations = st.lists(maybe(st.lists(score_message, min_size=1, max_size=3)), min_size=1, max_size=3)
input_data = st.fixed_dictionaries({"input_string": maybe(conversations), "parameters": parameters})
score_bodies = maybe(
    st.fixed_dictionaries(
        {"input_data": maybe(input_data)},
        optional={"params": maybe(st.fixed_dictionaries({}, optional={"seed": setting["seed"]}))},
    )
)
chat_bodies = maybe(
    st.fixed_dictionaries(
        {"messages": maybe(st.lists(chat_message, min_size=1, max_size=3)), "max_tokens": new_tokens},
        optional={
            "model": maybe(st.sampled_from([MODEL_NAME, "ftctl-tiny-phi3", "gpt-4o", "", "tiny-phi3"])),
            "max_completion_tokens": new_tokens,
            "temperature": setting["temperature"],
            "top_p": setting["top_p"],
            "seed": setting["seed"],
            # fields the endpoint refuses unless they hold their no-op value
            "n": maybe(st.sampled_from([1, None, 2])),
            "stop": maybe(st.sampled_from([None, [], "", ["\n"]])),
            "presence_penalty": maybe(st.sampled_from([0, 0.0, None, 0.5])),
            "logprobs": maybe(st.sampled_from([False, None, True])),
            "stream": maybe(st.booleans()),
            "stream_options": maybe(st.fixed_dictionaries({}, optional={"include_usage": json_values})),
            "user": json_values,  # ignored
        },
    )
)


def encode(value: Any, how: str) -> bytes:
    """The request body: `ascii` escapes everything (lone surrogates as \\udxxx), `raw` writes UTF-8
    with lone surrogates as their raw (invalid) bytes, `latin-1` is not UTF-8 at all."""
    text = json.dumps(value, ensure_ascii=how == "ascii", allow_nan=True)
    while (start := text.find('"@@deep:')) >= 0:
        end = text.index('@@"', start)
        text = text[:start] + nested(int(text[start + 8 : end])) + text[end + 3 :]
    if how == "latin-1":
        return text.encode("latin-1", "replace")
    return text.encode("utf-8", "surrogatepass")


def send(client: TestClient, path: str, body: bytes) -> Any:
    response = client.post(path, content=body, headers=AUTH)
    detail = f"{path} {body[:300]!r}... ({len(body)} bytes) -> {response.status_code} {response.text[:500]}"
    if currently_in_test_context():  # pytest --hypothesis-show-statistics shows what the examples got
        event(f"HTTP {response.status_code}")
    assert response.status_code < 500, detail
    if response.status_code >= 400:
        payload = response.json()
        if path == SCORE:
            assert set(payload) == {"error"} and isinstance(payload["error"], str), detail
        else:
            error = payload["error"]
            assert set(error) == {"message", "type", "param", "code"}, detail
            assert isinstance(error["message"], str) and error["type"] == "invalid_request_error", detail
    elif path == SCORE:
        assert isinstance(response.json()["output"], (str, list)), detail
    return response


how = st.sampled_from(["ascii", "ascii", "raw", "latin-1"])


U = [[{"role": "user", "content": "hi"}]]


def scoring(parameters: Any = None, input_string: Any = None) -> bytes:
    data = {"input_string": U if input_string is None else input_string, "parameters": {"max_new_tokens": 2}}
    if parameters is not None:
        data["parameters"] = {"max_new_tokens": 2, **parameters}
    return json.dumps({"input_data": data}).encode()


def chat(**fields: Any) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}).encode()


def user(content: Any, role: Any = "user") -> list[dict[str, Any]]:
    return [{"role": role, "content": content}]


# --------------------------------------------------------------------------------------------------
# Properties


@FUZZ
@given(body=score_bodies, how=how)
def test_score_never_answers_5xx(client: TestClient, body: Any, how: str) -> None:
    raw = encode(body, how)
    if len(raw) <= MAX_BODY_BYTES:
        send(client, SCORE, raw)


@FUZZ
@given(body=chat_bodies, how=how)
def test_chat_completions_never_answer_5xx(client: TestClient, body: Any, how: str) -> None:
    raw = encode(body, how)
    if len(raw) <= MAX_BODY_BYTES:
        send(client, CHAT, raw)


@settings(FUZZ, max_examples=50)
@given(
    path=st.sampled_from([SCORE, CHAT]),
    prefix=st.binary(max_size=40),
    junk=st.binary(min_size=1, max_size=8),
    cut=st.integers(min_value=0, max_value=200),
)
def test_mangled_bytes_never_answer_5xx(
    client: TestClient, path: str, prefix: bytes, junk: bytes, cut: int
) -> None:
    """A valid body with bytes spliced in (or cut short): whatever is left is answered 2xx or 4xx."""
    raw = scoring() if path == SCORE else chat()
    at = cut % (len(raw) + 1)
    send(client, path, prefix + raw[:at] + junk + raw[at:])


# --------------------------------------------------------------------------------------------------
# The cases the properties found (each was a 500 before), kept as plain examples

FOUND = {
    "score-integer-over-4300-digits": (SCORE, scoring({"top_k": 1}).replace(b"1}", b"9" * 5000 + b"}")),
    "score-temperature-beyond-float-range": (SCORE, scoring({"temperature": 10**400})),
    "score-repetition-penalty-beyond-float-range": (SCORE, scoring({"repetition_penalty": -(10**400)})),
    "score-lone-surrogate-in-content": (SCORE, scoring(input_string=[user("\ud800")])),
    "score-lone-surrogate-raw-bytes": (
        SCORE,
        scoring(input_string=[user("@")]).replace(b"@", b"\xed\xa0\x80"),
    ),
    "score-lone-surrogate-parameter-name": (SCORE, scoring({"\udfff": 1})),
    "chat-lone-surrogate-in-content": (CHAT, chat(messages=user("a\udc00"))),
    "chat-lone-surrogate-part-type": (CHAT, chat(messages=user([{"type": "\ud800"}]))),
    "chat-temperature-beyond-float-range": (CHAT, chat(temperature=10**400)),
    "chat-role-is-a-list": (CHAT, chat(messages=user("hi", role=[]))),
    "chat-role-is-an-object": (CHAT, chat(messages=user("hi", role={}))),
}


@pytest.mark.parametrize(("path", "body"), list(FOUND.values()), ids=list(FOUND))
def test_found_cases_are_4xx(client: TestClient, path: str, body: bytes) -> None:
    assert send(client, path, body).status_code == 400


@pytest.mark.parametrize("path", [SCORE, CHAT])
def test_megabyte_prompt_is_refused_without_tokenizing_it(client: TestClient, path: str) -> None:
    """A prompt far beyond the context is refused at once (tokenizing 7 MB took ~6 s of the model thread,
    during which every other request waited)."""
    messages = [{"role": "user", "content": "word " * 1_400_000}]
    body = scoring(input_string=[messages]) if path == SCORE else chat(messages=messages)
    started = time.monotonic()
    response = send(client, path, body)
    assert response.status_code == 400 and "tokens" in response.text
    assert time.monotonic() - started < 2.5


def test_chat_template_refusal_is_a_bad_request(client: TestClient) -> None:
    """A chat template that raises (the shipped one on a role it does not know; real ones on roles that
    do not alternate) refuses the request: BadRequest (400), not an unexpected error (500)."""
    generator = client.app.state.generator  # type: ignore[attr-defined]
    from ftctl.backends.local.serving.request import BadRequest

    with pytest.raises(BadRequest, match="chat template refused"):
        generator.prompt([{"role": "robot", "content": "hi"}])
