"""OpenAI-compatible chat completions on the local endpoint, so existing OpenAI clients can talk to a
fine-tuned model::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:PORT/v1", api_key="<the endpoint key>")
    client.chat.completions.create(model="<its id>", messages=[{"role": "user", "content": "Hi"}])

Routes (the same `Authorization: Bearer <key>` as /score):
  POST /v1/chat/completions  {"model", "messages", "temperature", "top_p", "max_tokens" (or
                             "max_completion_tokens"), "seed", "stop", "n": 1, "stream", "stream_options"}.
                             Omitted settings take the endpoint's defaults (as /score does); temperature
                             0 is greedy; the reply ends before the first "stop" sequence (up to 4), with
                             finish_reason "stop", as OpenAI's does. Fields the endpoint cannot honour with
                             a non-default value (n > 1, response_format other than text, tools, logprobs,
                             penalties) are answered with 400 rather than
                             ignored; other fields are ignored. "model" must name the model served
                             (its id, as GET /v1/models lists it, or that id without its ":<version>"),
                             or be left out; another name is answered 404 with code "model_not_found",
                             as OpenAI does.
                             stream=true answers with server-sent events: `chat.completion.chunk`
                             objects (role, then content deltas as tokens are generated, then the
                             finish_reason; a usage chunk with stream_options.include_usage), then
                             `data: [DONE]`.
  GET  /v1/models            the one model served.
Errors have OpenAI's shape: {"error": {"message", "type", "param", "code"}}. A request body that has not
all arrived within the request timeout is answered 408 (code "request_timeout") and its connection closed.

Deliberately no `from __future__ import annotations`: FastAPI reads the handlers' annotations.
"""

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ftctl.backends.local.serving.app import BodyTimeout, close_connection, log, read_body
from ftctl.backends.local.serving.generation import Generator, server_timing
from ftctl.backends.local.serving.request import (
    BadRequest,
    GenerationTimeout,
    normalize_parameters,
    parse_json_body,
    show,
)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Fields that change what a client gets back: refused unless they hold their no-op value.
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v in (None, 1),
    # text is all this endpoint writes: json_object / json_schema would be a promise it cannot keep
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") in (None, "text")),
    "tools": lambda v: not v,
    "functions": lambda v: not v,
    "logprobs": lambda v: not v,
    "top_logprobs": lambda v: not v,
    "presence_penalty": lambda v: v in (None, 0, 0.0),
    "frequency_penalty": lambda v: v in (None, 0, 0.0),
    "logit_bias": lambda v: not v,
    "audio": lambda v: not v,
}


def _content(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):  # content parts: only text ones are supported
        texts = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                if not isinstance(kind, str) or len(kind) > 40:
                    kind = show(kind)
                raise BadRequest(
                    f"messages[{index}].content: only text parts are supported (got {kind})", param="messages"
                )
        return "".join(texts)
    raise BadRequest(f"messages[{index}].content must be a string or a list of text parts", param="messages")


def served_names(model_name: str) -> set[str]:
    """The `model` values a request may name: the id served and, for an id `name:version` (how ftctl
    deploy names a registered model), the bare name."""
    names = {model_name}
    if ":" in model_name:
        names.add(model_name.rsplit(":", 1)[0])
    return names


def _cut(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _openai_names(message: str, tokens_field: str = "max_tokens") -> str:
    """A message from the shared parameter checks, in OpenAI's field names."""
    return message.replace("max_new_tokens", tokens_field)


def _openai_param(param: str | None, tokens_field: str) -> str | None:
    """The request field a shared check's `param` stands for."""
    return tokens_field if param == "max_new_tokens" else param


def _chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The conversation of a request's "messages", in the roles the chat template knows."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            '"messages" must be a non-empty list of {"role", "content"} objects', param="messages"
        )
    conversation = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object", param="messages")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(
                f"messages[{index}].role {show(role)} is not supported (supported: {', '.join(ROLES)})",
                param="messages",
            )
        conversation.append({"role": ROLES[role], "content": _content(message.get("content"), index)})
    return conversation


def _check_unsupported(body: dict[str, Any]) -> None:
    """BadRequest for a field the endpoint cannot honour that holds more than its no-op value."""
    for name, fine in _UNSUPPORTED.items():
        if name in body and not fine(body[name]):
            raise BadRequest(f"{name} is not supported by this endpoint (got {show(body[name])})", param=name)


def _chat_settings(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(generation settings, the field the reply length came from) of a request."""
    parameters: dict[str, Any] = {}
    for name in ("temperature", "top_p", "seed"):
        if body.get(name) is not None:
            parameters[name] = body[name]
    tokens_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        parameters["max_new_tokens"] = limit
    if "temperature" in parameters:
        parameters["do_sample"] = parameters["temperature"] != 0
    try:
        settings = normalize_parameters(parameters)
    except BadRequest as exc:  # name OpenAI's field, not the /score one
        message = _openai_names(str(exc), tokens_field)
        raise BadRequest(message, param=_openai_param(exc.param, tokens_field)) from None
    return settings, tokens_field


MAX_STOP_SEQUENCES = 4  # as OpenAI


def _stop_sequences(body: dict[str, Any]) -> list[str]:
    """The request's `stop`: a string or a list of up to 4; none when absent, null, "" or []."""
    stop = body.get("stop")
    if stop is None or stop == "" or stop == []:
        return []
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) and s for s in sequences):
        raise BadRequest('"stop" must be a string or a list of non-empty strings', param="stop")
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise BadRequest(
            f'"stop" takes at most {MAX_STOP_SEQUENCES} sequences (got {len(sequences)})', param="stop"
        )
    return list(sequences)


class StopFilter:
    """Applies stop sequences to text as it streams: what `feed` returns may be sent (text that could
    still begin a stop sequence is held back), nothing from the first stop sequence on is ever
    returned, and `hit` says one was met (generation can stop there)."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        text = self.held + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit, self.held = True, ""
            return text[: min(found)]
        keep = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """What is still held back, once generation ended without meeting a stop sequence."""
        rest, self.held = self.held, ""
        return "" if self.hit else rest


def _stream_options(body: dict[str, Any]) -> tuple[bool, bool]:
    """(whether to stream, whether to send a usage chunk) of a request."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest('"stream" must be true or false', param="stream")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise BadRequest('"stream_options" must be an object', param="stream_options")
    return stream, bool(options.get("include_usage"))


def parse_chat_request(body: Any) -> dict[str, Any]:
    """The conversation, generation settings and streaming options of a chat.completions request.

    Returns {"model", "messages", "settings", "stop", "stream", "include_usage", "tokens_field"} ("stop": the
    stop sequences, applied to the reply as OpenAI does; "model": the
    name asked for, None when left out; "tokens_field": the field the reply length came from); raises
    BadRequest naming the problem (and the field, as `param`).
    """
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest(f'"model" must be a string (got {show(model)})', param="model")
    conversation = _chat_messages(body)
    _check_unsupported(body)
    settings, tokens_field = _chat_settings(body)
    stream, include_usage = _stream_options(body)
    return {
        "model": model,
        "messages": conversation,
        "settings": settings,
        "stop": _stop_sequences(body),
        "stream": stream,
        "include_usage": include_usage,
        "tokens_field": tokens_field,
    }


def _error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> Any:
    from fastapi.responses import JSONResponse

    # a lone surrogate cannot be encoded as UTF-8: escape it rather than fail the response
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status
    )


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Generation:
    """One generation in a worker thread, its tokens streamed through a TextIteratorStreamer that also
    counts them (usage) and remembers the last one (finish_reason)."""

    def __init__(
        self,
        gen: Generator,
        messages: list[dict],
        settings: dict[str, Any],
        timeout_s: float,
        stop: list[str],
    ) -> None:
        from transformers import TextIteratorStreamer

        outer = self

        class _Streamer(TextIteratorStreamer):
            def put(self, value: Any) -> None:
                prompt = self.skip_prompt and self.next_tokens_are_prompt
                super().put(value)
                if not prompt:
                    ids = value.reshape(-1).tolist()
                    outer.completion_tokens += len(ids)
                    if ids:
                        outer.last_token = int(ids[-1])

        self.gen = gen
        self.stop = StopFilter(stop)
        self.messages = messages
        self.settings = settings
        self.timeout_s = timeout_s
        self.completion_tokens = 0
        self.last_token: int | None = None
        self.error: BaseException | None = None
        self.text = ""
        self.model_s: float | None = None  # the model thread's time (Server-Timing), once generated
        self.cancel = threading.Event()
        self.done = threading.Event()
        self.streamer = _Streamer(
            gen.tokenizer, skip_prompt=True, timeout=timeout_s, skip_special_tokens=True
        )
        if gen.max_positions and settings["max_new_tokens"] > gen.max_positions:
            # checked here too, so that a stream is refused with 400 rather than failing after its 200
            raise BadRequest(
                f"parameter max_new_tokens must be at most {gen.max_positions}, the model's context "
                f"length (got {settings['max_new_tokens']})",
                param="max_new_tokens",
            )
        prompt = gen.prompt(messages)
        self.prompt_tokens = len(gen.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if gen.max_positions and self.prompt_tokens >= gen.max_positions:
            raise BadRequest(
                f"the prompt is {self.prompt_tokens} tokens; this model takes at most "
                f"{gen.max_positions - 1} before it generates"
            )

    def run(self) -> None:
        """The worker: generate, record the text or the error, always end the stream."""
        try:
            deadline = time.monotonic() + self.timeout_s
            replies = self.gen.generate(
                [self.messages], self.settings, deadline=deadline, cancel=self.cancel, streamer=self.streamer
            )
            self.text, self.model_s = replies[0], getattr(replies, "model_s", None)
        except BaseException as exc:  # handed to the request handler
            self.error = exc
            self.streamer.end()
        finally:
            self.done.set()

    def start(self) -> None:
        threading.Thread(target=self.run, name="ftctl-openai-generate", daemon=True).start()

    def apply_stop(self) -> None:
        """A finished non-streaming generation's text, cut at the first stop sequence."""
        self.text = self.stop.feed(self.text) + self.stop.finish()

    @property
    def finish_reason(self) -> str:
        if self.stop.hit:
            return "stop"
        if self.last_token is not None and self.last_token in self.gen.eos_token_ids:
            return "stop"
        return "length" if self.completion_tokens >= self.settings["max_new_tokens"] else "stop"

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class _Answer(Exception):
    """An error response a helper answers in place of the route: raised by it, returned by the route."""

    def __init__(self, response: Any) -> None:
        super().__init__()
        self.response = response


def _check_access(request: Any, app: Any, gen: Generator, authorized: Callable[[str | None], bool]) -> None:
    """_Answer with 401 without the key, or 503 while the model is not loaded."""
    if not authorized(request.headers.get("authorization")):
        raise _Answer(
            _error(
                401,
                "missing or invalid key: send the header `Authorization: Bearer <key>`",
                "authentication_error",
                "invalid_api_key",
            )
        )
    if not gen.loaded:
        if app.state.load_error:
            raise _Answer(_error(503, f"the model failed to load: {app.state.load_error}", "server_error"))
        raise _Answer(
            _error(503, "the model is still loading; retry when /health/ready answers 200", "server_error")
        )


def _refused_request(exc: BadRequest, parsed: dict[str, Any]) -> Any:
    """400 for a request the generator refused, in OpenAI's field names."""
    field = parsed["tokens_field"]
    return _error(400, _openai_names(str(exc), field), param=_openai_param(exc.param, field))


async def _read_chat_request(request: Any, limit: int, model_name: str, timeout_s: float) -> dict[str, Any]:
    """The parsed request (see parse_chat_request); _Answer with 413, 400, 404 (another model), or 408
    (the connection closed) when the body has not all arrived within `timeout_s` (see read_body)."""
    try:
        raw = await read_body(request, limit, timeout_s)
    except BodyTimeout as exc:
        raise _Answer(close_connection(_error(408, str(exc), code="request_timeout"))) from None
    if raw is None:
        raise _Answer(_error(413, f"the request body is over {limit} bytes"))
    try:
        parsed = parse_chat_request(parse_json_body(raw))
    except BadRequest as exc:  # in OpenAI's field names already
        raise _Answer(_error(400, str(exc), param=exc.param)) from None
    if parsed["model"] is not None and parsed["model"] not in served_names(model_name):
        raise _Answer(
            _error(
                404,
                f"The model `{_cut(parsed['model'])}` does not exist or you do not have access to "
                f"it (this endpoint serves `{model_name}`)",
                code="model_not_found",
                param="model",
            )
        )
    return parsed


def _new_generation(gen: Generator, parsed: dict[str, Any], timeout_s: float) -> _Generation:
    """The generation a request asks for, not started yet; _Answer with 400 if the model cannot take it."""
    try:
        return _Generation(gen, parsed["messages"], parsed["settings"], timeout_s, parsed["stop"])
    except BadRequest as exc:
        raise _Answer(_refused_request(exc, parsed)) from None
    except Exception as exc:  # a bug (what a client sends is answered 4xx above)
        log.exception("cannot prepare the generation")
        raise _Answer(
            _error(500, f"cannot prepare the generation: {type(exc).__name__}: {exc}", "server_error")
        ) from None


@dataclass(frozen=True)
class _Reply:
    """What every object of one completion carries: its id, creation time and model."""

    completion_id: str
    created: int
    model_name: str

    def completion(self, generation: _Generation) -> dict[str, Any]:
        """The `chat.completion` object of a finished generation."""
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": generation.text},
                    "finish_reason": generation.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": generation.usage(),
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        """A `chat.completion.chunk` object."""
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_name,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }


async def _complete(generation: _Generation, parsed: dict[str, Any], reply: _Reply, timeout_s: float) -> Any:
    """Run a non-streaming generation: the completion, or 504, 400 or 500."""
    generation.start()
    done = await asyncio.to_thread(generation.done.wait, timeout_s + 5)
    if not done or isinstance(generation.error, GenerationTimeout):
        generation.cancel.set()
        return _error(504, f"request timed out after {round(timeout_s * 1000)} ms", "timeout")
    if isinstance(generation.error, BadRequest):
        return _refused_request(generation.error, parsed)
    if generation.error is not None:
        log.error("generation failed: %r", generation.error)
        return _error(500, f"generation failed: {type(generation.error).__name__}", "server_error")
    generation.apply_stop()
    from fastapi.responses import JSONResponse

    return JSONResponse(reply.completion(generation), headers=server_timing(generation.model_s))


def _events(generation: _Generation, reply: _Reply, include_usage: bool, timeout_s: float) -> Iterator[str]:
    """The server-sent events of a streaming generation (a sync iterator: Starlette runs it in a worker
    thread)."""
    generation.start()
    try:
        yield _sse(reply.chunk({"role": "assistant", "content": ""}))
        try:
            for piece in generation.streamer:
                sent = generation.stop.feed(piece)
                if sent:
                    yield _sse(reply.chunk({"content": sent}))
                if generation.stop.hit:
                    generation.cancel.set()  # the rest would not be sent: stop generating
                    break
            rest = generation.stop.finish()
            if rest:
                yield _sse(reply.chunk({"content": rest}))
        except Exception:  # queue.Empty: no token for timeout_s
            generation.cancel.set()
            generation.error = GenerationTimeout("no token within the request timeout")
        generation.done.wait(timeout_s)
        if generation.error is not None and not generation.stop.hit:  # (a stop cancels generation)
            if isinstance(generation.error, GenerationTimeout):
                message, kind = f"request timed out after {round(timeout_s * 1000)} ms", "timeout"
            else:
                message, kind = f"generation failed: {generation.error}", "server_error"
            yield _sse({"error": {"message": message, "type": kind, "param": None, "code": None}})
        else:
            yield _sse(reply.chunk({}, generation.finish_reason))
            if include_usage:
                yield _sse({**reply.chunk({}), "choices": [], "usage": generation.usage()})
        yield "data: [DONE]\n\n"
    finally:
        generation.cancel.set()  # the client went away, or we are done: stop generating


def add_openai_routes(
    app: Any,
    gen: Generator,
    *,
    authorized: Callable[[str | None], bool],
    request_timeout_s: float,
    model_name: str,
) -> None:
    """Register /v1/chat/completions and /v1/models on the scoring app."""
    from fastapi import Request
    from fastapi.responses import StreamingResponse

    created_at = int(time.time())

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        try:
            _check_access(request, app, gen, authorized)
        except _Answer as answer:
            return answer.response
        return {
            "object": "list",
            "data": [{"id": model_name, "object": "model", "created": created_at, "owned_by": "ftctl"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            _check_access(request, app, gen, authorized)
            parsed = await _read_chat_request(
                request, app.state.max_body_bytes, model_name, request_timeout_s
            )
            generation = _new_generation(gen, parsed, request_timeout_s)
        except _Answer as answer:
            return answer.response
        reply = _Reply(f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), model_name)
        if not parsed["stream"]:
            return await _complete(generation, parsed, reply, request_timeout_s)
        return StreamingResponse(
            _events(generation, reply, parsed["include_usage"], request_timeout_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )
