"""Slow and vanishing clients against a real endpoint process (uvicorn on an inherited socket, the
shipped tiny Phi-3, a 2 s request timeout): raw sockets send the headers of a POST with
`Content-Length: 100` and one byte of body, then wait, or leave.

- the body read is bounded by the request timeout: the client is answered 408 within a generous bound
  of it (or the connection is closed) and the server closes its end, on /score and on the OpenAI route;
- many such clients at once: the server's sockets go back to what they were after the deadline, while
  the clients still hold theirs open;
- a client that leaves mid-body is one short log line: no traceback, no 500;
- past the server's connection bound (`--max-connections`), a request is answered 503 at once;
- the server still scores afterwards.

Every case failed on the code before its fix (the 408 never came; each vanished client was a
`POST /score 500` and a ClientDisconnect traceback; the option did not exist).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftctl.backends.local.serving.probe import wait_until_ready
from harness import spawn_server

pytestmark = pytest.mark.integration  # real server processes

TINY_MODEL = Path(__file__).resolve().parents[2] / "src" / "ftctl" / "resources" / "tiny-phi3"
KEY = "slow-clients-key-0123456789"
TIMEOUT_S = 2.0  # the server's request timeout, hence its body-read deadline
SLACK_S = 13.0  # generous: a loaded 2-core machine
PATHS = ["/score", "/v1/chat/completions"]
SCORE = {
    "input_data": {
        "input_string": [[{"role": "user", "content": "hi"}]],
        "parameters": {"do_sample": False, "max_new_tokens": 4},
    }
}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sockets(self) -> int:
        """How many sockets the server process holds open (its listening socket included)."""
        count = 0
        for fd in os.listdir(f"/proc/{self.proc.pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{self.proc.pid}/fd/{fd}").startswith("socket:")
        return count


def start_server(tmp_path: Path, *extra: str, timeout_s: float = TIMEOUT_S) -> Iterator[Server]:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    log_path = tmp_path / "server.log"
    proc, port = spawn_server(
        TINY_MODEL, key_file, log_path, f"--request-timeout-ms={round(timeout_s * 1000)}", *extra
    )
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", 120, proc=proc)
        yield Server(proc, port, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start_server(tmp_path_factory.mktemp("slow-clients"))


def partial_request(port: int, path: str, timeout_s: float = TIMEOUT_S + SLACK_S) -> socket.socket:
    """A connection that sent a POST's headers (`Content-Length: 100`) and one byte of its body."""
    client = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    client.sendall(head.encode())
    return client


def read_until_closed(client: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    return data


def status_of(answer: bytes) -> int | None:
    """The status code of an HTTP answer; None for no answer (the server just closed)."""
    if not answer:
        return None
    return int(answer.split(b" ", 2)[1])


def score(server: Server) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/score",
        data=json.dumps(SCORE).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        return int(response.status)


def wait_for(condition: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


@pytest.mark.parametrize("path", PATHS)
def test_a_partial_body_is_answered_408_at_the_deadline(server: Server, path: str) -> None:
    started = time.monotonic()
    with partial_request(server.port, path) as client:
        try:
            answer = read_until_closed(client)  # the server must close its end, too
        except TimeoutError:
            pytest.fail(
                f"{path}: no answer and not closed {time.monotonic() - started:.0f} s after the body stalled"
            )
    elapsed = time.monotonic() - started
    assert status_of(answer) in (408, None), answer[:200]
    assert TIMEOUT_S * 0.5 <= elapsed < TIMEOUT_S + SLACK_S, elapsed
    if answer:
        assert b"request body" in answer and b"not received" in answer, answer
    assert f"POST {path} 500" not in server.log()


def test_stalled_clients_are_let_go_at_the_deadline(server: Server) -> None:
    """20 stalled uploads at once: each is answered 408 (or closed) by the deadline and the server closes
    its end, although the clients keep theirs open; the server then holds no more sockets than before.
    (Each client reads until the server closes: counting the server's sockets while they connect depends
    on when its event loop accepts them, on a loaded machine seconds later.)"""
    baseline = server.sockets()
    clients = [partial_request(server.port, PATHS[i % 2]) for i in range(20)]
    try:
        started = time.monotonic()
        for client in clients:
            assert status_of(read_until_closed(client)) in (408, None)
        assert time.monotonic() - started < TIMEOUT_S + SLACK_S
        assert wait_for(lambda: server.sockets() <= baseline, SLACK_S), (baseline, server.sockets())
    finally:
        for client in clients:
            client.close()
    assert score(server) == 200


@pytest.mark.parametrize("path", PATHS)
def test_a_client_that_leaves_mid_body_is_one_log_line(server: Server, path: str) -> None:
    before = len(server.log())
    with partial_request(server.port, path):
        time.sleep(0.3)  # the server is waiting on the body now
    line = f"POST {path} client disconnected"
    wait_for(lambda: line in server.log()[before:] or "Traceback" in server.log()[before:], 10)
    new = server.log()[before:]
    assert "Traceback" not in new and "ClientDisconnect" not in new, new[:3000]
    assert f"POST {path} 500" not in new, new[:3000]
    assert line in new, new[:3000]
    assert len(new.splitlines()) == 1, new


def test_the_server_still_scores_after_slow_clients(server: Server) -> None:
    for _ in range(5):  # a burst of clients that leave mid-body
        with partial_request(server.port, "/score"):
            pass
    assert score(server) == 200
    log = server.log()
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
    assert "POST /score 200" in log


def test_connections_past_the_bound_are_answered_503(tmp_path: Path) -> None:
    """`--max-connections 8` and a 10 s request timeout: with 8 stalled uploads open, a new request is
    answered 503 at once (not after the uploads' deadline) and the server closes that connection; once
    the uploads are let go, /score answers again."""
    for server in start_server(tmp_path, "--max-connections=8", timeout_s=10):
        stalled = [partial_request(server.port, "/score", timeout_s=30) for _ in range(8)]
        try:
            time.sleep(0.5)
            started = time.monotonic()
            with partial_request(server.port, "/score", timeout_s=30) as extra:
                answer = read_until_closed(extra)
            assert status_of(answer) == 503, answer[:200]
            assert time.monotonic() - started < 5
            for client in stalled:
                assert status_of(read_until_closed(client)) in (408, None)
        finally:
            for client in stalled:
                client.close()
        assert score(server) == 200
        assert "Traceback" not in server.log()
