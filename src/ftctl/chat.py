"""Talking to the deployed endpoint: its credentials, a user's own scoring request, a multi-turn chat.

Everything goes through Azure ML's scoring contract (`POST <scoring_uri>`, `Authorization: Bearer
<key>`), so it is the same for every backend that records a scoring URI and a key. Standard library only.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ftctl.errors import StageFailed, UsageError
from ftctl.scoring import build_request, parse_response

if TYPE_CHECKING:
    from ftctl.context import Context


@dataclass
class Endpoint:
    name: str
    deployment: str
    url: str
    scoring_uri: str
    key: str
    key_file: str
    model: str | None
    openai_base_url: str | None  # None where the endpoint has no OpenAI-compatible route (Azure ML)
    # How to send a scoring request, for a backend whose endpoint is not reached with urllib (Azure ML:
    # its HTTP pipeline, proxies and retries); None posts with urllib (a local endpoint).
    send: Callable[[Endpoint, bytes, float], Reply] | None = None

    def credentials(self) -> dict[str, Any]:
        """What `ftctl credentials` shows (the one place the key is shown); the same keys on every
        backend (openai_base_url and model are null where there is none)."""
        return {
            "endpoint_name": self.name,
            "deployment_name": self.deployment,
            "scoring_uri": self.scoring_uri,
            "primary_key": self.key,
            "openai_base_url": self.openai_base_url,
            "model": self.model,
        }


def endpoint(ctx: Context, command: str) -> Endpoint:
    """The endpoint `ftctl deploy` started, checked to be up; UsageError (exit 2) naming what to run."""
    ctx.backend.require("endpoint")
    return ctx.backend.endpoint(ctx.state_store.load(), command)


class EndpointError(StageFailed):
    """The endpoint answered with an error status (exit 2 for a request it refused as bad, else 1)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the endpoint answered HTTP {status}: {message}")
        self.status = status
        if status in (400, 413, 422):
            self.exit_code = 2


class RequestTooLarge(StageFailed):
    """The request is over the endpoint's body limit (exit 2: the request is at fault, not the endpoint;
    a StageFailed, so an interactive chat reports it and goes on)."""

    exit_code = 2

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"request too large ({size} bytes; the endpoint accepts at most {limit})",
            hint="send fewer or shorter conversations",
        )
        self.size = size
        self.limit = limit


def _body_limit() -> int:
    """The most bytes the endpoint takes in one request body (only the local backend records
    endpoints so far; its server refuses larger bodies with 413)."""
    from ftctl.constants import MAX_BODY_BYTES

    return MAX_BODY_BYTES


@dataclass
class Reply:
    status: int
    raw: str
    latency_ms: float

    @property
    def text(self) -> str:
        return parse_response(self.raw)


def post(ep: Endpoint, body: bytes, timeout_s: float) -> Reply:
    """POST a scoring request: through the backend's sender if it has one, else with urllib, bypassing
    proxies (the endpoint is local).

    A body over the local endpoint's limit is not sent (RequestTooLarge): the server would answer 413 as
    soon as it read the headers and close the connection while the body was still being written, which
    the client sees as a reset connection, not as the answer.
    """
    if ep.send is not None:
        return ep.send(ep, body, timeout_s)
    limit = _body_limit()
    if len(body) > limit:
        raise RequestTooLarge(len(body), limit)
    request = urllib.request.Request(
        ep.scoring_uri,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {ep.key}",
            "azureml-model-deployment": ep.deployment,
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    started = time.perf_counter()
    try:
        with opener.open(request, timeout=timeout_s) as response:
            raw = response.read().decode("utf-8", "replace")
            status = response.status
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        try:
            message = json.loads(text).get("error") or text
        except (ValueError, AttributeError):
            message = text
        if exc.code == 413:  # an endpoint with a lower limit: it says which ("... over N bytes")
            stated = re.search(r"(\d+) bytes", str(message))
            raise RequestTooLarge(len(body), int(stated.group(1)) if stated else limit) from None
        raise EndpointError(exc.code, str(message)[:300]) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)):
            raise StageFailed(
                f"the endpoint at {ep.scoring_uri} closed the connection while the request "
                f"({len(body)} bytes) was being sent ({reason})",
                hint="an endpoint cuts off a request over its size limit like this: send a smaller one; "
                "if that fails too, see whether the endpoint still runs (`ftctl status`)",
            ) from None
        raise StageFailed(
            f"the endpoint at {ep.scoring_uri} is unreachable ({reason})", hint="run `ftctl deploy`"
        ) from None
    return Reply(status, raw, round((time.perf_counter() - started) * 1000, 1))


def generation_parameters(ctx: Context, **overrides: Any) -> dict[str, Any]:
    """The score section's generation settings, with the given (non-None) overrides."""
    cfg = ctx.cfg.score
    parameters: dict[str, Any] = {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "do_sample": cfg.do_sample,
        "max_new_tokens": cfg.max_new_tokens,
    }
    parameters.update({k: v for k, v in overrides.items() if v is not None})
    if parameters.get("temperature") == 0:
        parameters["do_sample"] = False
    return parameters


def _utf8(data: bytes, where: str) -> str:
    """`data` decoded as UTF-8 (a leading byte-order mark dropped); UsageError naming `where` and the
    line and column of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UsageError(
            f"{where}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x})",
            hint="save the request as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None


def require_stdin(what: str) -> TextIO:
    """sys.stdin, for `what` to read; UsageError when there is none (started with stdin closed, as
    `ftctl chat <&-`) or it is closed."""
    stdin = sys.stdin
    if stdin is None or getattr(stdin, "closed", False):
        raise UsageError(
            f"{what} reads standard input, and this ftctl has none (it was closed)",
            hint="type at a terminal, or pipe the input in: `echo 'Hi' | ftctl chat`",
        )
    return stdin


def read_request(path: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """A scoring request from a file (`-` for stdin): Azure's {"input_data": ...} body as it is, or
    a bare conversation (a list of {role, content}, or {"messages": [...]}) wrapped with `parameters`.

    UsageError (exit 2) naming the file when it cannot be read, is not UTF-8 or is not JSON (with the
    line and column), or is not a request."""
    where = "stdin" if path == "-" else path
    try:
        if path != "-":
            text = _utf8(Path(path).read_bytes(), f"--file {where}")
        elif (binary := getattr(require_stdin("--file -"), "buffer", None)) is not None:
            text = _utf8(binary.read(), f"--file {where}")
        else:
            text = sys.stdin.read()
    except OSError as exc:
        raise UsageError(f"--file {where}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError as exc:  # a text stdin without a byte buffer
        raise UsageError(f"--file {where}: not UTF-8 text ({exc.reason})") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--file {where}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise UsageError(f"--file {where}: not usable JSON (nested too deeply)") from None
    except ValueError:  # an integer literal longer than sys.get_int_max_str_digits()
        raise UsageError(
            f"--file {where}: not usable JSON (an integer of more than {sys.get_int_max_str_digits()} digits)"
        ) from None
    if isinstance(body, dict) and "input_data" in body:
        return body
    messages = body.get("messages") if isinstance(body, dict) else body
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        return build_request(messages, parameters)
    raise UsageError(
        f'--file {where}: expected a scoring request ({{"input_data": {{"input_string": [[...]], '
        f'"parameters": {{...}}}}}}) or a conversation ([{{"role": "user", "content": "..."}}])'
    )


# --------------------------------------------------------------------------------------------------
# Chat


HELP = "/reset starts a new conversation, /exit (or Ctrl-D) ends the chat, /help shows this"


@dataclass
class ChatSession:
    ep: Endpoint
    parameters: dict[str, Any]
    timeout_s: float
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    turns: int = 0

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, text: str) -> tuple[str, float]:
        """Send the conversation with `text` as the next user turn; keep both turns if it succeeds."""
        conversation = [*self.history, {"role": "user", "content": text}]
        body = json.dumps(build_request(conversation, self.parameters)).encode("utf-8")
        reply = post(self.ep, body, self.timeout_s)
        answer = reply.text.strip()  # the model may open its turn with a newline
        self.history = [*conversation, {"role": "assistant", "content": answer}]
        self.turns += 1
        return answer, reply.latency_ms


_SURROGATE = re.compile("[\ud800-\udfff]")  # what a surrogateescape stdin makes of bytes not UTF-8
_NOT_UTF8_HINT = "ftctl chat reads UTF-8 text; convert the input first (e.g. iconv -f latin1 -t utf-8)"


def input_lines(stdin: TextIO, prompt: str | None = None) -> Iterator[str]:
    """Lines from stdin, one at a time, so a pipe from another process works. With a `prompt` (stdin is
    a terminal) they are read with input(), which gives line editing and history once readline is
    imported.

    Piped lines are read as bytes and decoded as UTF-8 one by one (whatever the locale's encoding and
    error handler of `stdin`): a line that is not UTF-8 raises UsageError naming its number, after
    the lines before it were answered."""
    binary = getattr(stdin, "buffer", None) if prompt is None else None
    for number in itertools.count(1):
        where = f"stdin line {number}"
        try:
            if prompt is not None:
                line = input(prompt)
            elif binary is not None:
                raw = binary.readline()
                if not raw:
                    return
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UsageError(
                        f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                        "of the line)",
                        hint=_NOT_UTF8_HINT,
                    ) from None
            else:
                line = stdin.readline()
                if not line:
                    return
        except EOFError:
            return
        except UnicodeDecodeError as exc:
            raise UsageError(f"{where} is not UTF-8 text ({exc.reason})", hint=_NOT_UTF8_HINT) from None
        if _SURROGATE.search(line):
            raise UsageError(f"{where} is not UTF-8 text", hint=_NOT_UTF8_HINT)
        if number == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark
        yield line.rstrip("\r\n")


def run_chat(
    session: ChatSession,
    lines: Iterable[str],
    *,
    say: Callable[[str], None],
    answer: Callable[[int, str, str, float], None],
    interactive: bool,
    waiting: Callable[[], Any],
) -> int:
    """The chat loop: returns the number of turns answered. `say` prints a status line (stderr),
    `answer(turn, user, reply, latency_ms)` prints a reply, `waiting()` is a context manager shown
    while the endpoint answers. An endpoint error ends a piped chat (exit 1); at a terminal it is
    reported and the chat goes on without that turn."""
    for raw in lines:
        text = raw.strip()
        if not text:
            continue
        if text.startswith("/"):
            command = text.split()[0].lower()
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                session.reset()
                say("(new conversation)")
            elif command == "/help":
                say(HELP)
            else:
                say(f"unknown command {command}: {HELP}")
            continue
        try:
            with waiting():
                reply, latency_ms = session.ask(raw)
        except StageFailed as exc:
            if not interactive:
                raise
            say(f"error: {exc.message}")
            continue
        answer(session.turns, raw, reply, latency_ms)
    return session.turns
