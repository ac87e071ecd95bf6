"""The local scoring endpoint: Azure ML's online-endpoint scoring contract, served by FastAPI + uvicorn.

Run it as::

    python -m ftctl.backends.local.server --model-dir DIR --key-file FILE [--fd N | --port N]
        [--host 127.0.0.1] [--request-timeout-ms 90000] [--device cpu] [--max-batch-size 16]
        [--max-connections N]

Routes:
  GET  /health/live   200 {"status": "alive"} as soon as the server runs (no auth)
  GET  /health/ready  200 {"status": "ready", "model": "<model id>"} once the model is loaded, else 503
                      (no auth; nothing reachable without the key names a filesystem path)
  POST /score         `Authorization: Bearer <key>`; body as in the notebook's sample_score.json.
                      One conversation -> {"output": "<text>"}; several -> {"output": ["<text>", ...]}.
                      Errors -> {"error": "..."} with 400 (bad body), 401 (key), 408 (the body did not
                      all arrive within the request timeout; the connection is closed), 413 (body too
                      large), 503 (not loaded yet, or over --max-connections), 504 (timed out) or 500
                      (a bug: no client input causes it).
  POST /v1/chat/completions, GET /v1/models
                      OpenAI-compatible (same key), non-streaming and streaming (SSE); see openai_compat.

The key is read from a file (never argv or the environment) and never logged; SIGHUP reads the file
again (`ftctl credentials --rotate`), and the new key is the only one accepted from then on. With `--fd
N` uvicorn serves on an already-bound listening socket inherited from the parent process: that is how
the deploy stage starts it (bind 127.0.0.1:0, learn the port, pass the descriptor with `pass_fds`, close
its own copy). Module import is cheap: fastapi, torch and transformers are imported only where needed.

This module is the process entry: its arguments, the hand-off with deploy, and uvicorn. The parts it
serves live in ftctl.backends.local.serving, by role: request parsing, generation, the app, and the
probes the deploy stage uses (is the port open, is the model loaded).
"""

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import collector, threads
from ftctl.backends.local.serving.app import ServerOptions, create_app, set_key
from ftctl.errors import FtctlError
from ftctl.models.layout import resolve_hf_dir

if TYPE_CHECKING:  # pragma: no cover
    pass

log = logging.getLogger("ftctl.server")

# What `ftctl deploy` writes on the --handoff-fd pipe once the state file records this server.
HANDOFF_RECORDED = b"recorded"

# The default bound on open connections (--max-connections; see connection_limit).
MAX_CONNECTIONS = 1000
# Seconds an idle keep-alive connection is kept after its last answer (uvicorn's default, made explicit).
KEEP_ALIVE_S = 5


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
    parser.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections past which requests are answered 503 (default: half the process's "
        f"file-descriptor limit, at most {MAX_CONNECTIONS})",
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
    if args.max_connections is not None and args.max_connections < 1:
        log.error("--max-connections must be >= 1")
        return 2
    return None


def _read_key(key_file: Path, folder_fd: int | None = None) -> str | None:
    """The endpoint key in `key_file` (with `folder_fd`, the file of that name in the folder open as
    `folder_fd`); None (logged) when it cannot be read or is empty."""
    try:
        if folder_fd is None:
            key = key_file.read_text(encoding="utf-8").strip()
        else:
            fd = os.open(key_file.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
            with os.fdopen(fd, "rb") as handle:
                key = handle.read(4096).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.error("cannot read the key file %s: %s", key_file, exc)
        return None
    if not key:
        log.error("the key file %s is empty", key_file)
        return None
    return key


def connection_limit(requested: int | None = None) -> int:
    """The most open connections the server serves (uvicorn's `limit_concurrency`): `requested`, else half
    the process's file-descriptor limit (RLIMIT_NOFILE), at most MAX_CONNECTIONS and at least 16.

    uvicorn bounds nothing by default: every connection it accepts holds a descriptor until the client
    or a timeout ends it, and a hostile client once held 19,900 of the server's 20,000 (uploads stalled
    mid-body), past which the server could open neither a connection nor a file. With this bound, a
    request on a connection past it is answered 503 at once and that connection closed, so the stalled
    ones (let go at the request timeout, see read_body) cannot take every descriptor, and the other half
    stays for the model, the tokenizer and the log. 1000 concurrent connections is far beyond what one
    model (a generate call at a time, --max-batch-size conversations each) can serve usefully. Not
    covered: uvicorn times out no connection before its first request (its keep-alive timer starts
    after an answer), so connections that never send a byte stay open; they count toward the bound."""
    if requested is not None:
        return requested
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // 2))


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
        app,
        **where,
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        # Bounds on what clients can hold open (see connection_limit): past the limit a request is
        # answered 503 and its connection closed; an idle keep-alive connection is closed after
        # KEEP_ALIVE_S; a stalled request body is answered 408 at the request timeout (read_body).
        # + 1: uvicorn counts the connection asking among the open ones (at `limit_concurrency` open, it
        # refuses the last), so N lets N - 1 through
        limit_concurrency=connection_limit(args.max_connections) + 1,
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)

    def _stop() -> None:
        server.should_exit = True

    app.state.on_load_failure = _stop
    _reload_key_on_sighup(app, args.key_file)
    if args.expires_at is not None:
        _stop_at(args.expires_at, _stop)
    server.run()
    if app.state.load_error:
        return 1
    return 0


def _reload_key_on_sighup(app: Any, key_file: Path) -> None:
    """`ftctl credentials --rotate` writes a new key file and sends SIGHUP: from then on the new key is
    the one accepted. An unreadable or empty file keeps the old key (logged; never the key itself).
    The key's folder is held open, so a workspace moved (`mv`) while the endpoint runs is still the
    one it reads its new key from."""
    folder_fd = os.open(key_file.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def reload(signum: int, frame: Any) -> None:
        key = _read_key(key_file, folder_fd)
        if key is not None:
            set_key(app, key)
            log.info("the endpoint key was rotated")

    signal.signal(signal.SIGHUP, reload)


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
    collector.fewer_collections()  # started cold, it imports torch and transformers (ftctl.collector)
    threads.begin()  # measures the machine's other load while the server starts (ftctl.threads)
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
