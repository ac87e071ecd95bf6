"""The endpoint's HTTP app (FastAPI): health routes, POST /score with Azure ML's scoring contract, and the
OpenAI-compatible routes (ftctl.backends.local.openai_compat).

Deliberately no `from __future__ import annotations` here: FastAPI reads the route handlers'
annotations at runtime, and `Request` is imported inside the functions that add the routes."""

import asyncio
import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import threads
from ftctl.backends.local.batching import BatchingGenerator
from ftctl.backends.local.serving.generation import Generator, server_timing
from ftctl.backends.local.serving.request import (
    BadRequest,
    GenerationTimeout,
    parse_json_body,
    parse_score_body,
    public_message,
)
from ftctl.constants import MAX_BODY_BYTES
from ftctl.errors import FtctlError

if TYPE_CHECKING:  # pragma: no cover
    import fastapi

log = logging.getLogger("ftctl.server")

DEPLOYMENT_HEADER = "azureml-model-deployment"


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    # a lone surrogate cannot be encoded as UTF-8: escape it rather than fail the response
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": message}, status_code=status)


class BodyTimeout(Exception):
    """The request body did not all arrive within its deadline (see read_body)."""


def close_connection(response: Any) -> Any:
    """`response`, marked `Connection: close`: uvicorn closes the connection once it is sent. For an
    answer given before the request body was read to its end (408), so the connection is freed rather
    than left waiting for the rest of a body nobody will read."""
    response.headers["connection"] = "close"
    return response


async def read_body(
    request: Any, limit: int = MAX_BODY_BYTES, timeout_s: float | None = None
) -> bytes | None:
    """The request body, or None as soon as it is over `limit` bytes (declared or streamed: a chunked
    upload is never read into memory past the limit).

    With `timeout_s`, BodyTimeout when the whole body has not arrived within that many seconds: uvicorn
    has no deadline of its own on reading a body, so a client that declares `Content-Length: 100` and
    sends one byte would hold its connection (and a file descriptor) for as long as it likes. A client
    that leaves mid-body raises starlette's ClientDisconnect (_log_requests logs it as one line)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None

    async def collect() -> bytes | None:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    if timeout_s is None:
        return await collect()
    try:
        return await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise BodyTimeout(
            f"request body not received in time (within {round(timeout_s * 1000)} ms)"
        ) from None


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

    `request_timeout_s`: requests running longer are answered 504; a request body that has not all
    arrived within it is answered 408 (and its connection closed). `device` and `max_batch_size`: the
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
        log.info(threads.apply().describe())  # what the model thread chose (FTCTL_THREADS, cores, load)
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
    """Middleware: log every request (method, path, status, time); echo the deployment header.

    A client that disconnects before its request was read (ClientDisconnect, from read_body) is one
    line, `POST /score client disconnected`: it is not a server error, and a traceback per dropped
    connection once grew the log by 4.7 KB each (94 MB for 19,900 of them)."""
    from starlette.requests import ClientDisconnect
    from starlette.responses import Response

    started = time.perf_counter()
    what = f"{request.method} {request.url.path}"
    try:
        response = await call_next(request)
    except ClientDisconnect:
        log.info("%s client disconnected %.0fms", what, (time.perf_counter() - started) * 1000)
        # nobody is there to read it (uvicorn drops what is sent on a closed connection); 499 is
        # nginx's "client closed request"
        return Response(status_code=499)
    except BaseException:
        log.info("%s 500 %.0fms", what, (time.perf_counter() - started) * 1000)
        raise
    log.info("%s %d %.0fms", what, response.status_code, (time.perf_counter() - started) * 1000)
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


def set_key(app: Any, key: str) -> None:
    """The key the app accepts from now on (the server calls it when its key file is rotated)."""
    if not key:
        raise ValueError("the endpoint key must not be empty")
    app.state.key = key.encode("utf-8")


def _refuse_score(request: Any, app: Any, gen: Generator) -> Any:
    """401 without the key, 503 while the model is not loaded; else None."""
    if not _authorized(request.headers.get("authorization"), app.state.key):
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
    """The /score answer: {"output": the reply, or the list of them when `several`}, or 504, 400 or 500.

    A reply carries `Server-Timing: model;dur=<ms>`, the model thread's time on the generate call that
    made it (a batch's, when it was batched): the rest of the request's time is the endpoint's own."""
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
    from fastapi.responses import JSONResponse

    headers = server_timing(getattr(replies, "model_s", None))
    return JSONResponse({"output": list(replies) if several else replies[0]}, headers=headers)


def _add_health_routes(app: Any, gen: Generator, served_name: str) -> None:
    """GET /health/live and /health/ready (no key)."""

    @app.get("/health/live")
    async def live() -> Any:
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready() -> Any:
        return _readiness(app, gen, served_name)


def _add_score_route(app: Any, gen: Generator, options: ServerOptions) -> None:
    """POST /score: concurrent requests with the same settings share one generate call."""
    from fastapi import Request

    batcher = BatchingGenerator(gen, max_batch_size=options.max_batch_size, timeout_error=GenerationTimeout)

    @app.post("/score")
    async def score(request: Request) -> Any:
        refused = _refuse_score(request, app, gen)
        if refused is not None:
            return refused
        try:
            # the request timeout bounds the upload too: a stalled one is answered 408 and let go
            raw = await read_body(request, options.max_body_bytes, options.request_timeout_s)
        except BodyTimeout as exc:
            return close_connection(_error(408, str(exc)))
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
    set_key(app, key)
    app.state.max_body_bytes = opts.max_body_bytes
    app.state.load_error = None
    app.state.on_load_failure = None
    app.middleware("http")(_log_requests)
    _add_health_routes(app, gen, served_name)
    _add_score_route(app, gen, opts)
    add_openai_routes(
        app,
        gen,
        authorized=lambda header: _authorized(header, app.state.key),
        request_timeout_s=opts.request_timeout_s,
        model_name=served_name,
    )
    return app
