"""Reading OpenAI chat.completions requests (the endpoint's /v1 route; served for real in test_endpoint),
and the `model` a request names (in-process, on the shipped tiny model)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ftctl.backends.local.openai_compat import parse_chat_request, served_names
from ftctl.backends.local.serving.app import ServerOptions, create_app
from ftctl.backends.local.serving.request import BadRequest

USER = {"role": "user", "content": "Hi"}


def test_messages_and_settings() -> None:
    parsed = parse_chat_request(
        {
            "model": "anything",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "you"}],
                },
                {"role": "assistant", "content": None},
                USER,
            ],
            "temperature": 0,
            "top_p": 0.5,
            "max_completion_tokens": 7,
            "max_tokens": 99,
            "seed": 3,
            "n": 1,
            "stop": None,
            "presence_penalty": 0,
            "user": "ignored",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert parsed["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "Hello you"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Hi"},
    ]
    settings = parsed["settings"]
    assert settings["temperature"] == 0 and settings["do_sample"] is False  # temperature 0: greedy
    assert settings["top_p"] == 0.5 and settings["max_new_tokens"] == 7 and settings["seed"] == 3
    assert parsed["stream"] is True and parsed["include_usage"] is True


def test_defaults_are_the_endpoints() -> None:
    parsed = parse_chat_request({"messages": [USER]})
    assert parsed["settings"] == {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200}
    assert parsed["stream"] is False and parsed["include_usage"] is False
    assert parse_chat_request({"messages": [USER], "temperature": 1.2})["settings"]["do_sample"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "must be a JSON object"),
        ({}, '"messages" must be a non-empty list'),
        ({"messages": []}, '"messages" must be a non-empty list'),
        ({"messages": ["hi"]}, "messages[0] must be an object"),
        ({"messages": [{"role": "tool", "content": "x"}]}, 'messages[0].role "tool" is not supported'),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "only text parts are supported (got image_url)",
        ),
        ({"messages": [{"role": "user", "content": 5}]}, "must be a string or a list of text parts"),
        ({"messages": [USER], "n": 2}, "n is not supported by this endpoint (got 2)"),
        ({"messages": [USER], "stop": [""]}, '"stop" must be a string or a list of non-empty strings'),
        ({"messages": [USER], "stop": list("abcde")}, '"stop" takes at most 4 sequences (got 5)'),
        (
            {"messages": [USER], "response_format": {"type": "json_object"}},
            "response_format is not supported by this endpoint",
        ),
        ({"messages": [USER], "tools": [{"type": "function"}]}, "tools is not supported"),
        ({"messages": [USER], "logprobs": True}, "logprobs is not supported"),
        ({"messages": [USER], "frequency_penalty": 0.5}, "frequency_penalty is not supported"),
        ({"messages": [USER], "max_tokens": 0}, "parameter max_tokens must be >= 1 (got 0)"),
        ({"messages": [USER], "max_tokens": True}, "parameter max_tokens must be an integer"),
        ({"messages": [USER], "temperature": "hot"}, "parameter temperature must be a finite number"),
        ({"messages": [USER], "top_p": 0}, "parameter top_p must be in (0, 1]"),
        ({"messages": [USER], "stream": "yes"}, '"stream" must be true or false'),
        ({"messages": [USER], "stream_options": []}, '"stream_options" must be an object'),
    ],
)
def test_bad_requests_name_the_problem(body: object, message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_chat_request(body)
    assert message in str(raised.value)


# --------------------------------------------------------------------------------------------------
# The model a request names (served in-process on the shipped tiny Phi-3)

TINY_MODEL = Path(__file__).resolve().parents[2] / "src" / "ftctl" / "resources" / "tiny-phi3"
KEY = "openai-compat-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVED = "ftctl-tiny-phi3-chat-ultrachat-200k:1"  # how `ftctl deploy` names it: <registered name>:<version>


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(TINY_MODEL, key=KEY, options=ServerOptions(request_timeout_s=30, model_name=SERVED))
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield test_client


def complete(client: TestClient, **fields: object) -> Any:
    body = {"messages": [USER], "max_tokens": 2, "temperature": 0, **fields}
    return client.post("/v1/chat/completions", json=body, headers=AUTH)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "model", ["gpt-4o", "anything", "", SERVED + "x", "ftctl-tiny-phi3-chat-ultrachat-200k:2"]
)
def test_an_unknown_model_is_404_as_openai_answers_it(client: TestClient, model: str, stream: bool) -> None:
    response = complete(client, model=model, stream=stream)
    assert response.status_code == 404 and response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model" and error["code"] == "model_not_found"
    assert f"The model `{model}` does not exist" in error["message"] and SERVED in error["message"]


@pytest.mark.parametrize("model", [SERVED, "ftctl-tiny-phi3-chat-ultrachat-200k", None])
def test_the_served_model_its_bare_name_or_none_is_answered(client: TestClient, model: str | None) -> None:
    fields = {} if model is None else {"model": model}
    response = complete(client, **fields)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == SERVED  # the reply names the id served, as OpenAI's do
    streamed = complete(client, stream=True, **fields)
    assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")


def test_a_completion_reports_the_model_time(client: TestClient) -> None:
    """As /score's replies do: Server-Timing names the model's share of the request."""
    response = complete(client)
    name, _, duration = response.headers["server-timing"].partition(";dur=")
    assert response.status_code == 200 and name == "model" and float(duration) > 0
    assert "server-timing" not in complete(client, model="gpt-4o").headers


def test_models_lists_the_served_id(client: TestClient) -> None:
    listed = client.get("/v1/models", headers=AUTH).json()["data"]
    assert [m["id"] for m in listed] == [SERVED]
    assert complete(client, model=listed[0]["id"]).status_code == 200


def test_served_names() -> None:
    assert served_names(SERVED) == {SERVED, "ftctl-tiny-phi3-chat-ultrachat-200k"}
    assert served_names("tiny-phi3") == {"tiny-phi3"}


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"model": 5}, 400, "model"),
        ({"model": ["gpt-4o"]}, 400, "model"),
        ({"n": 2}, 400, "n"),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_completion_tokens": 10**6}, 400, "max_completion_tokens"),
        ({"max_tokens": 10**6, "stream": True}, 400, "max_tokens"),  # refused before the stream starts
        ({"temperature": -1}, 400, "temperature"),
        ({"messages": []}, 400, "messages"),
        ({"stream": "yes"}, 400, "stream"),
    ],
)
def test_errors_name_the_field(client: TestClient, fields: dict[str, Any], status: int, param: str) -> None:
    response = complete(client, **fields)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
