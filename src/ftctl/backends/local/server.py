"""The local scoring endpoint: Azure ML's online-endpoint scoring contract, served by FastAPI + uvicorn.

Run it as::

    python -m ftctl.backends.local.server --model-dir DIR --key-file FILE [--fd N | --port N]
        [--host 127.0.0.1] [--request-timeout-ms 90000] [--device cpu] [--max-batch-size 16]

Routes:
  GET  /health/live   200 {"status": "alive"} as soon as the server runs (no auth)
  GET  /health/ready  200 {"status": "ready", "model": "<model id>"} once the model is loaded, else 503
                      (no auth; nothing reachable without the key names a filesystem path)
  POST /score         `Authorization: Bearer <key>`; body as in the notebook's sample_score.json.
                      One conversation -> {"output": "<text>"}; several -> {"output": ["<text>", ...]}.
                      Errors -> {"error": "..."} with 400 (bad body), 401 (key), 413 (body too large),
                      503 (not loaded yet), 504 (timed out) or 500 (a bug: no client input causes it).
  POST /v1/chat/completions, GET /v1/models
                      OpenAI-compatible (same key), non-streaming and streaming (SSE); see openai_compat.

The key is read from a file (never argv or the environment) and never logged. With `--fd N` uvicorn
serves on an already-bound listening socket inherited from the parent process: that is how the deploy
stage starts it (bind 127.0.0.1:0, learn the port, pass the descriptor with `pass_fds`, close its own
copy). Module import is cheap: fastapi, torch and transformers are imported only where needed, so the
deploy stage can import `wait_until_ready` and `port_is_open` from here for free.

Deliberately no `from __future__ import annotations` here: FastAPI reads the route handlers'
annotations at runtime, and `Request` is imported inside the functions that add the routes.
"""

import argparse
import asyncio
import contextlib
import errno
import hmac
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.backends.local.batching import BatchingGenerator
from ftctl.constants import MAX_BODY_BYTES
from ftctl.errors import FtctlError, StageFailed
from ftctl.models.layout import resolve_hf_dir
from ftctl.scoring import DEFAULT_PARAMETERS, extract_conversations

if TYPE_CHECKING:  # pragma: no cover
    import fastapi

log = logging.getLogger("ftctl.server")

END_TOKEN = "<|end|>"
DEPLOYMENT_HEADER = "azureml-model-deployment"
# What `ftctl deploy` writes on the --handoff-fd pipe once the state file records this server.
HANDOFF_RECORDED = b"recorded"

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
_PROMPT_CHARS_SLACK = 4
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


# --------------------------------------------------------------------------------------------------
# Request parsing (standard library only)


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


# --------------------------------------------------------------------------------------------------
# Generation


class Generator:
    """Loads a causal LM + tokenizer and turns conversations into replies.

    `generate` is thread-safe: calls are serialized with a lock. It is the seam for a later
    improvement that gathers concurrent requests into one `model.generate` call; within one call
    the conversations are already generated in left-padded batches of at most `max_batch_size`.
    """

    def __init__(self, model_dir: Path, *, device: str = "cpu", max_batch_size: int = 8) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.model_dir = Path(model_dir)
        self.device = device
        self.max_batch_size = max_batch_size
        self.model: Any = None
        self.tokenizer: Any = None
        self.eos_token_ids: list[int] = []
        self.pad_token_id: int | None = None
        self.max_positions: int | None = None
        self.max_prompt_chars: int | None = None  # longer prompts are refused without tokenizing
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._criterion_class: Any = None
        # Every torch call runs on this one thread. With OpenMP, each thread that calls into torch gets
        # its own team of worker threads; two teams on two cores spin against each other, which made a
        # 15 ms generate take 39 ms once requests arrived on different threads.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ftctl-model")

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        """Load the model and tokenizer (on the model thread)."""
        self._model_thread.submit(self._load).result()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no progress bars in the server log
        hf_dir = resolve_hf_dir(self.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        dtype = torch.float32 if self.device == "cpu" else "auto"
        model: Any = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype)
        model.to(self.device)
        model.eval()

        eos: list[int] = []

        def add(ids: Any) -> None:
            for token_id in ids if isinstance(ids, (list, tuple)) else [ids]:
                if isinstance(token_id, int) and token_id not in eos:
                    eos.append(token_id)

        add(tokenizer.get_vocab().get(END_TOKEN))
        add(tokenizer.eos_token_id)
        add(getattr(model.generation_config, "eos_token_id", None))
        if not eos:
            raise FtctlError(f"{hf_dir}: the tokenizer has no end-of-turn ({END_TOKEN}) or eos token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos[0])
        tokenizer.padding_side = "left"
        if not getattr(tokenizer, "chat_template", None):
            raise FtctlError(f"{hf_dir}: the tokenizer has no chat template")

        class _Deadline(StoppingCriteria):
            """Stops generation when the request's deadline passes or it is cancelled."""

            def __init__(self, deadline: float | None, events: list[threading.Event]) -> None:
                self.deadline = deadline
                self.events = events
                self.fired = False

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                if (self.deadline is not None and time.monotonic() >= self.deadline) or any(
                    e.is_set() for e in self.events
                ):
                    self.fired = True
                return torch.full(
                    (input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device
                )

        self._criterion_class = _Deadline
        self.eos_token_ids = eos
        self.pad_token_id = tokenizer.pad_token_id
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        if self.max_positions:
            longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
            self.max_prompt_chars = self.max_positions * max(1, longest) * _PROMPT_CHARS_SLACK
        self.tokenizer = tokenizer
        self.model = model  # last: `loaded` turns true only when everything above is in place

    def stop(self) -> None:
        """Make any generation in progress stop at its next token (server shutdown)."""
        self._stopping.set()

    def prompt(self, conversation: list[dict]) -> str:
        """The conversation as prompt text. BadRequest if the chat template refuses it (a role order
        the model does not take) or it is far longer than the model's context (see
        _PROMPT_CHARS_SLACK): such a prompt is refused before tokenizing it."""
        from jinja2.exceptions import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
        except TemplateError as exc:
            raise BadRequest(f"the model's chat template refused the conversation: {exc}") from None
        if self.max_prompt_chars is not None and len(text) > self.max_prompt_chars:
            raise BadRequest(
                f"the prompt is {len(text):,} characters, far more than this model takes "
                f"({self.max_positions} tokens)"
            )
        return text

    def _generation_config(self, settings: dict[str, Any]) -> Any:
        from transformers import GenerationConfig

        do_sample = bool(settings.get("do_sample", False))
        temperature = settings.get("temperature")
        if do_sample and temperature is not None and temperature < MIN_SAMPLING_TEMPERATURE:
            do_sample = False  # temperature 0 means greedy, as most serving stacks read it
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings["max_new_tokens"],
            "do_sample": do_sample,
            "eos_token_id": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
        }
        if do_sample:
            for name in ("temperature", "top_p", "top_k"):
                if settings.get(name) is not None:
                    kwargs[name] = settings[name]
        if settings.get("repetition_penalty") is not None:
            kwargs["repetition_penalty"] = settings["repetition_penalty"]
        return GenerationConfig(**kwargs)

    def generate(
        self,
        conversations: list[list[dict]],
        params: dict[str, Any],
        *,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        streamer: Any = None,
    ) -> list[str]:
        """One reply per conversation. `params` are normalized settings (see normalize_parameters).

        `deadline` is a time.monotonic() value; past it (or once `cancel` is set) generation stops and
        GenerationTimeout is raised. Raises BadRequest when a prompt does not fit the model.
        `streamer` (a transformers streamer, one conversation only) receives the tokens as they come.
        """
        if deadline is not None:
            wait: float | None = max(0.0, deadline - time.monotonic()) + 1.0
        else:
            wait = None
        future = self._model_thread.submit(
            self._generate, conversations, params, deadline=deadline, cancel=cancel, streamer=streamer
        )
        try:
            return future.result(timeout=wait)
        except FutureTimeout:
            future.cancel()
            raise GenerationTimeout("timed out waiting for the model") from None

    def _check_generate(
        self,
        conversations: list[list[dict]],
        params: dict[str, Any],
        deadline: float | None,
        cancel: threading.Event | None,
        streamer: Any,
    ) -> None:
        """Refuse a generation before it waits for the model: past its deadline or cancelled
        (GenerationTimeout), no model, a reply longer than the model's context, or a misused streamer."""
        if (deadline is not None and time.monotonic() >= deadline) or (
            cancel is not None and cancel.is_set()
        ):
            raise GenerationTimeout("the request timed out while waiting for the model")
        if not self.loaded:
            raise RuntimeError("the model is not loaded")
        if self.max_positions and params["max_new_tokens"] > self.max_positions:
            raise BadRequest(
                f"parameter max_new_tokens must be at most {self.max_positions}, the model's context "
                f"length (got {params['max_new_tokens']})",
                param="max_new_tokens",
            )
        if streamer is not None and len(conversations) != 1:
            raise ValueError("a streamer takes exactly one conversation")

    def _generate(
        self,
        conversations: list[list[dict]],
        params: dict[str, Any],
        *,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
        streamer: Any = None,
    ) -> list[str]:
        self._check_generate(conversations, params, deadline, cancel, streamer)
        import torch

        events = [self._stopping] + ([cancel] if cancel is not None else [])
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._lock.acquire(timeout=wait):
            raise GenerationTimeout("timed out waiting for the model")
        try:
            prompts = [self.prompt(conv) for conv in conversations]
            generation_config = self._generation_config(params)
            if params.get("seed") is not None:
                torch.manual_seed(params["seed"])
            replies: list[str] = []
            with torch.inference_mode():
                for start in range(0, len(prompts), self.max_batch_size):
                    batch = prompts[start : start + self.max_batch_size]
                    criterion = self._criterion_class(deadline, events)
                    replies.extend(self._generate_batch(batch, generation_config, criterion, streamer))
            return replies
        finally:
            self._lock.release()

    def _generate_batch(
        self, prompts: list[str], generation_config: Any, criterion: Any, streamer: Any
    ) -> list[str]:
        """The replies to one left-padded batch of prompts (under the lock, in inference mode)."""
        from transformers import StoppingCriteriaList

        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_len = encoded["input_ids"].shape[1]
        if self.max_positions and prompt_len >= self.max_positions:
            raise BadRequest(
                f"the prompt is {prompt_len} tokens; this model takes at most "
                f"{self.max_positions - 1} before it generates"
            )
        output = self.model.generate(
            **{k: v.to(self.device) for k, v in encoded.items()},
            generation_config=generation_config,
            stopping_criteria=StoppingCriteriaList([criterion]),
            **({"streamer": streamer} if streamer is not None else {}),
        )
        if criterion.fired:
            raise GenerationTimeout("generation stopped: deadline passed or cancelled")
        return list(self.tokenizer.batch_decode(output[:, prompt_len:], skip_special_tokens=True))


# --------------------------------------------------------------------------------------------------
# The app


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    # a lone surrogate cannot be encoded as UTF-8: escape it rather than fail the response
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Any, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The request body, or None as soon as it is over `limit` bytes (declared or streamed: a chunked
    upload is never read into memory past the limit)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _authorized(header: str | None, key: bytes) -> bool:
    if not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8"), key)


@dataclass(frozen=True)
class ServerOptions:
    """How create_app serves the model.

    `request_timeout_s`: requests running longer are answered 504. `device` and `max_batch_size`: the
    torch device of the Generator create_app makes, and the most conversations per generate call.
    `model_name`: the model id the OpenAI-compatible routes and /health/ready report (default: the
    model folder's name; never a path). Request bodies over `max_body_bytes` are answered with 413.
    """

    request_timeout_s: float = 90.0
    device: str = "cpu"
    max_batch_size: int = 16
    model_name: str | None = None
    max_body_bytes: int = MAX_BODY_BYTES


def _check_options(key: str, options: ServerOptions) -> None:
    if not key:
        raise ValueError("the endpoint key must not be empty")
    if options.request_timeout_s <= 0:
        raise ValueError("request_timeout_s must be positive")
    if options.max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")


def _load_model(app: Any, gen: Generator, model_dir: Path, device: str) -> None:
    """Load the model (in the loading thread); on failure record why in `app.state.load_error` and call
    `app.state.on_load_failure`."""
    started = time.monotonic()
    log.info("loading the model from %s (device %s)", model_dir, device)
    try:
        gen.load()
    except Exception as exc:  # reported by /health/ready and by the process exit code
        message = str(exc) if isinstance(exc, FtctlError) else f"{type(exc).__name__}: {exc}"
        log.error("could not load the model: %s", message)
        # what clients see (/health/ready answers it without the key): no paths; the log has them
        app.state.load_error = public_message(message, model_dir) + " (the server log has details)"
        if app.state.on_load_failure is not None:
            app.state.on_load_failure()
        return
    log.info("model loaded in %.1f s; ready", time.monotonic() - started)


def _lifespan(gen: Generator, load: Callable[[], None]) -> Any:
    """The app's lifespan: start loading the model (`load`, in a thread) unless it is loaded; stop
    generating at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any):  # type: ignore[no-untyped-def]
        gen._stopping.clear()  # a generator handed over from an app that has shut down
        if not gen.loaded:
            threading.Thread(target=load, name="ftctl-model-load", daemon=True).start()
        yield
        gen.stop()

    return lifespan


async def _log_requests(request: Any, call_next: Any) -> Any:
    """Middleware: log every request (method, path, status, time); echo the deployment header."""
    started = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info("%s %s %d %.0fms", request.method, request.url.path, status, elapsed_ms)
    deployment = request.headers.get(DEPLOYMENT_HEADER)
    if deployment is not None:
        response.headers[DEPLOYMENT_HEADER] = deployment
    return response


def _readiness(app: Any, gen: Generator, served_name: str) -> Any:
    """The /health/ready answer."""
    from fastapi.responses import JSONResponse

    if gen.loaded:
        return {"status": "ready", "model": served_name}
    if app.state.load_error:
        return JSONResponse({"status": "failed", "error": app.state.load_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503)


def _refuse_score(request: Any, app: Any, gen: Generator, key: bytes) -> Any:
    """401 without the key, 503 while the model is not loaded; else None."""
    if not _authorized(request.headers.get("authorization"), key):
        return _error(401, "missing or invalid key: send the header `Authorization: Bearer <key>`")
    if not gen.loaded:
        if app.state.load_error:
            return _error(503, f"the model failed to load: {app.state.load_error}")
        return _error(503, "the model is still loading; retry when /health/ready answers 200")
    return None


async def _score_reply(
    batcher: BatchingGenerator,
    conversations: list[list[dict]],
    settings: dict[str, Any],
    several: bool,
    timeout_s: float,
) -> Any:
    """The /score answer: {"output": the reply, or the list of them when `several`}, or 504, 400 or 500."""
    cancel = threading.Event()
    deadline = time.monotonic() + timeout_s
    try:
        replies = await asyncio.wait_for(
            asyncio.to_thread(batcher.generate, conversations, settings, deadline=deadline, cancel=cancel),
            timeout=timeout_s,
        )
    except (asyncio.TimeoutError, GenerationTimeout):
        cancel.set()
        return _error(504, f"request timed out after {round(timeout_s * 1000)} ms")
    except BadRequest as exc:
        return _error(400, str(exc))
    except Exception as exc:
        log.exception("generation failed")
        return _error(500, f"generation failed: {type(exc).__name__}: {exc}")
    if several:
        return {"output": replies}
    return {"output": replies[0]}


def _add_health_routes(app: Any, gen: Generator, served_name: str) -> None:
    """GET /health/live and /health/ready (no key)."""

    @app.get("/health/live")
    async def live() -> Any:
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready() -> Any:
        return _readiness(app, gen, served_name)


def _add_score_route(app: Any, gen: Generator, key: bytes, options: ServerOptions) -> None:
    """POST /score: concurrent requests with the same settings share one generate call."""
    from fastapi import Request

    batcher = BatchingGenerator(gen, max_batch_size=options.max_batch_size, timeout_error=GenerationTimeout)

    @app.post("/score")
    async def score(request: Request) -> Any:
        refused = _refuse_score(request, app, gen, key)
        if refused is not None:
            return refused
        raw = await read_body(request, options.max_body_bytes)
        if raw is None:
            return _error(413, f"the request body is over {options.max_body_bytes} bytes")
        try:
            conversations, settings, several = parse_score_body(parse_json_body(raw))
        except BadRequest as exc:
            return _error(400, str(exc))
        return await _score_reply(batcher, conversations, settings, several, options.request_timeout_s)


def create_app(
    model_dir: Path,
    *,
    key: str,
    options: ServerOptions | None = None,
    generator: Generator | None = None,
) -> "fastapi.FastAPI":
    """The scoring app, served as `options` say (see ServerOptions). The model loads in a background
    thread when the app starts (lifespan), so /health/live answers at once and /health/ready turns 200
    when loading is done.

    `app.state.generator` is the Generator (`generator`, else one made here); `app.state.load_error`
    holds the message if loading failed, and `app.state.on_load_failure` (a no-argument callable, None
    by default) is called then: `main` uses it to stop the server so the process exits non-zero.
    """
    from fastapi import FastAPI

    from ftctl.backends.local.openai_compat import add_openai_routes

    opts = options or ServerOptions()
    _check_options(key, opts)
    key_bytes = key.encode("utf-8")
    model_dir = Path(model_dir)
    gen = generator or Generator(model_dir, device=opts.device, max_batch_size=opts.max_batch_size)
    served_name = opts.model_name or model_dir.name

    def load() -> None:
        _load_model(app, gen, model_dir, opts.device)

    app = FastAPI(
        title="ftctl local endpoint",
        lifespan=_lifespan(gen, load),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.generator = gen
    app.state.max_body_bytes = opts.max_body_bytes
    app.state.load_error = None
    app.state.on_load_failure = None
    app.middleware("http")(_log_requests)
    _add_health_routes(app, gen, served_name)
    _add_score_route(app, gen, key_bytes, opts)
    add_openai_routes(
        app,
        gen,
        authorized=lambda header: _authorized(header, key_bytes),
        request_timeout_s=opts.request_timeout_s,
        model_name=served_name,
    )
    return app


# --------------------------------------------------------------------------------------------------
# Helpers for the deploy stage (standard library only)


def port_is_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


UNREACHABLE_TRIES = 5  # "network unreachable" this many times in a row (about 2 s): no route will come


def _no_route(reason: Any) -> bool:
    """A connection that failed for want of any route (the loopback interface down), not for want of a
    listener: waiting longer does not help."""
    return isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL)


def wait_until_ready(url: str, timeout_s: float, proc: Any = None) -> None:
    """Poll `<url>/health/ready` until it answers 200.

    `url` is the endpoint's base URL (http://127.0.0.1:PORT; a URL already ending in /health/ready
    or /score is accepted too). If `proc` (a subprocess.Popen) exits first, or the server reports that
    the model failed to load, or `timeout_s` passes, raises StageFailed. Proxies are bypassed.
    """
    base = url.rstrip("/")
    for suffix in ("/health/ready", "/score"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    ready_url = base + "/health/ready"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    last = "no answer yet"
    unreachable = 0  # consecutive tries that found no route at all
    while True:
        if proc is not None and proc.poll() is not None:
            raise StageFailed(
                f"the scoring server exited with code {proc.returncode} before it was ready ({last})",
                hint="its log (stderr) says why",
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StageFailed(
                f"the scoring server at {base} was not ready after {timeout_s:g} s ({last})",
                hint="loading a large model on CPU takes a while; raise the deploy timeout",
            )
        try:
            with opener.open(ready_url, timeout=max(0.1, min(2.0, remaining))) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            try:
                payload = json.loads(exc.read() or b"{}")
            except (ValueError, OSError):
                payload = {}
            if isinstance(payload, dict) and payload.get("status") == "failed":
                raise StageFailed(
                    f"the scoring server could not load the model: {payload.get('error')}"
                ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            last = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
            unreachable = unreachable + 1 if _no_route(reason) else 0
            if unreachable >= UNREACHABLE_TRIES:
                raise StageFailed(
                    f"cannot connect to the scoring server at {base}: {last}; the loopback interface is "
                    "down (a network namespace without it, e.g. `unshare -n`)",
                    hint="bring it up (`ip link set lo up`) where the server runs",
                ) from None
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, 1.0)


# --------------------------------------------------------------------------------------------------
# Entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ftctl.backends.local.server",
        description="Serve a chat model with Azure ML's scoring contract (POST /score).",
    )
    parser.add_argument(
        "--model-dir", required=True, type=Path, help="a Hugging Face model folder or an MLflow model folder"
    )
    parser.add_argument(
        "--key-file",
        required=True,
        type=Path,
        help="a file holding the endpoint key (callers send `Authorization: Bearer <key>`)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--fd", type=int, help="serve on this inherited, already-bound listening socket")
    where.add_argument("--port", type=int, default=5001, help="bind this port (default 5001)")
    parser.add_argument("--host", default="127.0.0.1", help="bind this address (default 127.0.0.1)")
    parser.add_argument(
        "--request-timeout-ms",
        type=int,
        default=90000,
        help="answer 504 when a request takes longer (default 90000)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    parser.add_argument("--model-name", default=None, help="the model id the OpenAI-compatible routes report")
    parser.add_argument(
        "--max-batch-size", type=int, default=16, help="conversations per generate call (default 16)"
    )
    parser.add_argument(
        "--handoff-fd",
        type=int,
        default=None,
        help="wait on this pipe for the starter to record the server; exit if it closes unsigned",
    )
    parser.add_argument(
        "--expires-at",
        type=float,
        default=None,
        help="unix time at which the server stops itself (deploy.ttl, the cost guard)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _wait_for_handoff(fd: int) -> bool:
    """Read the handoff pipe to its end: True if the starter signed that it recorded this server."""
    data = b""
    try:
        while chunk := os.read(fd, 64):
            data += chunk
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return data == HANDOFF_RECORDED


def _refuse_start(args: argparse.Namespace) -> int | None:
    """The exit code for arguments the server cannot start with (or a handoff that failed); else None."""
    if args.handoff_fd is not None and not _wait_for_handoff(args.handoff_fd):
        log.error(
            "the ftctl that started this server exited before recording it; exiting, so that no "
            "endpoint runs without a record (run `ftctl deploy` again)"
        )
        return 3
    if args.request_timeout_ms <= 0:
        log.error("--request-timeout-ms must be positive")
        return 2
    if args.max_batch_size < 1:
        log.error("--max-batch-size must be >= 1")
        return 2
    return None


def _read_key(key_file: Path) -> str | None:
    """The endpoint key in `key_file`; None (logged) when it cannot be read or is empty."""
    try:
        key = key_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.error("cannot read the key file %s: %s", key_file, exc)
        return None
    if not key:
        log.error("the key file %s is empty", key_file)
        return None
    return key


def _serve(args: argparse.Namespace, key: str) -> int:
    """Run the app with uvicorn until it stops: 0, or 1 if the model failed to load."""
    import uvicorn

    options = ServerOptions(
        request_timeout_s=args.request_timeout_ms / 1000,
        device=args.device,
        max_batch_size=args.max_batch_size,
        model_name=args.model_name,
    )
    app = create_app(args.model_dir, key=key, options=options)
    where: dict[str, Any] = {"fd": args.fd} if args.fd is not None else {"host": args.host, "port": args.port}
    config = uvicorn.Config(
        app, **where, log_level=args.log_level, access_log=False, timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)

    def _stop() -> None:
        server.should_exit = True

    app.state.on_load_failure = _stop
    if args.expires_at is not None:
        _stop_at(args.expires_at, _stop)
    server.run()
    if app.state.load_error:
        return 1
    return 0


def _stop_at(when: float, stop: Callable[[], None]) -> None:
    """Call `stop` at unix time `when` (the endpoint's expiry): uvicorn then shuts down gracefully."""

    def expire() -> None:
        log.warning("the endpoint reached its expiry (deploy.ttl); stopping")
        stop()

    timer = threading.Timer(max(when - time.time(), 0.0), expire)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    refused = _refuse_start(args)
    if refused is not None:
        return refused
    key = _read_key(args.key_file)
    if key is None:
        return 2
    try:
        resolve_hf_dir(args.model_dir)
    except FtctlError as exc:
        log.error("%s", exc)
        return 2
    return _serve(args, key)


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so classes that other modules import from
    # ftctl.backends.local.server (openai_compat's BadRequest, GenerationTimeout) are the same ones.
    from ftctl.backends.local.server import main as _main

    sys.exit(_main())
