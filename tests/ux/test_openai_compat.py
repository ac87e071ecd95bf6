"""Reading OpenAI chat.completions requests (the endpoint's /v1 route; served for real in test_endpoint)."""

from __future__ import annotations

import pytest

from ftctl.backends.local.openai_compat import parse_chat_request
from ftctl.backends.local.server import BadRequest

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
        ({"messages": [USER], "stop": ["\n"]}, "stop is not supported"),
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
