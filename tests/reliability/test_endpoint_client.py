"""The client side of the endpoint under hostile input: `ftctl chat` fed bytes that are not UTF-8,
`ftctl score --file` with a request too large for the endpoint, or a file that is not UTF-8 or not
JSON. Each ends with one clear message and exit 2, never a traceback nor a misleading "unreachable".

The commands run in-process (typer's CliRunner) with `ftctl.chat.endpoint` pointed at a real uvicorn
server started in a thread on 127.0.0.1:0, whose generator is a stub (no model to load).
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ftctl import chat
from ftctl.backends.local.serving.app import MAX_BODY_BYTES, ServerOptions, create_app
from ftctl.backends.local.serving.generation import Generator
from ftctl.cli.app import app
from ftctl.errors import UsageError

KEY = "client-key-0123456789"
CONV = [{"role": "user", "content": "hi"}]


class Stub(Generator):
    def load(self) -> None:
        self.model = object()

    def generate(self, conversations, params, *, deadline=None, cancel=None, streamer=None):  # type: ignore[no-untyped-def]
        return ["stub reply"] * len(conversations)


def serve(tmp_path: Path, **kwargs: Any) -> Iterator[chat.Endpoint]:
    import uvicorn

    app = create_app(tmp_path, key=KEY, options=ServerOptions(**kwargs), generator=Stub(tmp_path))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        yield chat.Endpoint("ep", "demo", url, f"{url}/score", KEY, "/dev/null", None, f"{url}/v1")
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[chat.Endpoint]:
    yield from serve(tmp_path_factory.mktemp("endpoint"))


@pytest.fixture(scope="module")
def small_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[chat.Endpoint]:
    """An endpoint that takes at most 1000 bytes (a server whose limit is below the client's)."""
    yield from serve(tmp_path_factory.mktemp("small"), max_body_bytes=1000)


@pytest.fixture
def cli(ftctl: Any, endpoint: chat.Endpoint, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`cli(*args, input=..., code=0)`: ftctl in-process, its endpoint the stub server."""
    monkeypatch.setattr(chat, "endpoint", lambda ctx, command: endpoint)

    def run(*args: str, input: bytes | str | None = None, code: int | None = 0) -> Any:
        result = ftctl.runner.invoke(app, ["--workspace", str(ftctl.workspace), *args], input=input)
        if code is not None:
            assert result.exit_code == code, f"{result.stdout}\n{result.stderr}\n{result.exception!r}"
        return result

    return run


def clean_failure(result: Any) -> str:
    """stderr of a run that failed with exit 2 and one message (and a hint), no traceback."""
    output = result.stdout + result.stderr
    assert result.exit_code == 2, output
    assert "Traceback" not in output and "unexpected" not in result.stderr, output
    assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 1, output
    return result.stderr


def request_bytes(content: str) -> bytes:
    return json.dumps({"input_data": {"input_string": [[{"role": "user", "content": content}]]}}).encode()


# --------------------------------------------------------------------------------------------------
# ftctl chat


def test_the_stub_endpoint_answers(cli: Any) -> None:
    result = cli("chat", input="hello\n")
    assert "assistant> stub reply" in result.stdout and "chat ended after 1 turn" in result.stderr


@pytest.mark.parametrize("bad", [b"\xff\xfe hello", b"caf\xe9", b"\xed\xa0\x80", b"ok \xc3"])
def test_chat_input_that_is_not_utf8_names_its_line(cli: Any, bad: bytes) -> None:
    result = cli("chat", input=b"hello\n/help\n" + bad + b"\nnever sent\n", code=None)
    stderr = clean_failure(result)
    assert "stdin line 3 is not UTF-8 text" in stderr and "hint:" in stderr
    assert result.stdout.count("assistant> stub reply") == 1  # the line before it was answered


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_input_lines_reads_utf8_whatever_the_text_layer(errors: str) -> None:
    """A C-locale stdin decodes with surrogateescape (no error, lone surrogates instead); a UTF-8 one
    raises at its first 8 KiB chunk, not at the line. Reading the bytes underneath gives the line."""
    data = "\ufeffé one\r\ntwo\n".encode() + b"x" * 10_000 + b"\n\xff\n"
    lines = chat.input_lines(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors=errors))
    assert [next(lines), next(lines), next(lines)] == ["é one", "two", "x" * 10_000]
    with pytest.raises(UsageError, match="stdin line 4 is not UTF-8 text"):
        next(lines)


def test_input_lines_from_a_text_stream_without_bytes() -> None:
    assert list(chat.input_lines(io.StringIO("a\nb\r\n"))) == ["a", "b"]
    with pytest.raises(UsageError, match="stdin line 2 is not UTF-8"):
        list(chat.input_lines(io.StringIO("a\nb\udcff\n")))


# --------------------------------------------------------------------------------------------------
# ftctl score --file


def test_a_request_over_the_body_limit_is_reported_as_too_large(cli: Any, tmp_path: Path) -> None:
    request = tmp_path / "big.json"
    request.write_bytes(request_bytes("word " * (MAX_BODY_BYTES // 5 + 10)))
    stderr = clean_failure(cli("score", "--file", str(request), code=None))
    size = len(json.dumps(json.loads(request.read_bytes())).encode())
    assert f"request too large ({size} bytes; the endpoint accepts at most {MAX_BODY_BYTES})" in stderr
    assert "unreachable" not in stderr


def test_an_endpoint_with_a_lower_limit_is_reported_as_too_large(small_endpoint: chat.Endpoint) -> None:
    body = request_bytes("x" * 5000)
    with pytest.raises(chat.RequestTooLarge) as raised:
        chat.post(small_endpoint, body, 10)
    assert raised.value.exit_code == 2
    assert raised.value.message == f"request too large ({len(body)} bytes; the endpoint accepts at most 1000)"


def test_a_connection_cut_while_sending_is_not_called_unreachable(small_endpoint: chat.Endpoint) -> None:
    """A server that refuses the body after its headers closes the connection while megabytes are still
    being written: the client may never read the 413. It is not reported as an unreachable endpoint."""
    body = request_bytes("x" * (4 * 1024 * 1024))
    with pytest.raises(chat.StageFailed) as raised:
        chat.post(small_endpoint, body, 10)
    message = raised.value.message
    assert "unreachable" not in message
    assert "request too large" in message or "closed the connection while the request" in message


@pytest.mark.parametrize(
    ("content", "where", "what"),
    [
        (b'{"input_data":\n {"input_string": "caf\xe9"}}', ":2:23:", "not UTF-8 text (byte 0xe9)"),
        (b"\xff\xfe{\x00}\x00", ":1:1:", "not UTF-8 text (byte 0xff)"),
        (b'{"input_data": \n  nope}', ":2:3:", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, ":", "not usable JSON (nested too deeply)"),
        (b'{"input_data": {"x": ' + b"1" * 5000 + b"}}", ":", "not usable JSON (an integer of more than"),
    ],
    ids=["latin-1", "utf-16", "not-json", "deeply-nested", "huge-integer"],
)
def test_a_request_file_that_is_not_utf8_or_json_is_named(
    cli: Any, tmp_path: Path, content: bytes, where: str, what: str
) -> None:
    request = tmp_path / "request.json"
    request.write_bytes(content)
    stderr = clean_failure(cli("score", "--file", str(request), code=None))
    assert f"--file {request}{where}" in stderr and what in stderr
    piped = clean_failure(cli("score", "--file", "-", input=content, code=None))
    assert f"--file stdin{where}" in piped and what in piped


def test_a_request_file_with_a_byte_order_mark_is_read(cli: Any, tmp_path: Path) -> None:
    request = tmp_path / "bom.json"
    request.write_bytes(b"\xef\xbb\xbf" + json.dumps(CONV).encode())
    assert "output: stub reply" in cli("score", "--file", str(request)).stdout
