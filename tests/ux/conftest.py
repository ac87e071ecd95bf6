"""Fixtures for the user-facing tests: the session's trained workspace (tests/conftest.py: trained for
real once with the fast profile, followed by `ftctl submit` on a pseudo-terminal), copied for tests that
change it, and the session's deployed copy with a live endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness import FAST, Ftctl


@pytest.fixture
def trained(trained_ws: Ftctl) -> Ftctl:
    """auth .. register for real (the session's snapshot); tests must not change it (copy it instead)."""
    return trained_ws


@pytest.fixture
def deployed(deployed_ws: Ftctl) -> Ftctl:
    """A copy of the trained workspace with its endpoint up (the session's; torn down at its end)."""
    return deployed_ws


@pytest.fixture
def scratch(trained_ws: Ftctl, tmp_path: Path) -> Ftctl:
    """A private copy of the trained workspace."""
    return trained_ws.copy(tmp_path / "ws")


@pytest.fixture
def empty(tmp_path: Path) -> Ftctl:
    """A workspace where nothing has run yet."""
    return Ftctl(tmp_path, config=FAST)


@pytest.fixture
def fake_endpoint() -> Iterator[tuple[Any, list[dict[str, Any]]]]:
    """A stand-in scoring endpoint on 127.0.0.1 that records what it is sent and answers `reply N`
    (HTTP 400 when the last user turn contains "fail")."""
    from ftctl.chat import Endpoint

    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert self.headers["Authorization"] == "Bearer fake-key"
            requests.append(body)
            last = body["input_data"]["input_string"][0][-1]["content"]
            status, answer = (400, {"error": "parameter nope is bad"}) if "fail" in last else (
                200, {"output": f"reply {len(requests)}"})  # fmt: skip
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    ep = Endpoint("fake", "demo", url, f"{url}/score", "fake-key", "/dev/null", None, None)
    try:
        yield ep, requests
    finally:
        server.shutdown()
        server.server_close()
