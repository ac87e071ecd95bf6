"""The endpoint under load: 2,000 requests from 16 concurrent clients against the real server process.

The server (`python -m ftctl.backends.local.server`, the shipped tiny Phi-3, its own bind on the
default host) gets a seeded mix: 85% valid scoring requests (max_new_tokens 1-3, some with several
conversations), 10% malformed ones (bad JSON, missing or mistyped fields, oversize bodies and prompts,
absurd parameters) and 5% without the key or with a wrong one. Expected: no 5xx and no dropped
connection at all; every malformed request answered 4xx with {"error": "<reason>"}; every request
without the right key 401; the socket bound to 127.0.0.1 only; and the server answers normally after.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ftctl.backends.local.serving.probe import wait_until_ready

from .conftest import base_env, kill_group, listening_addresses

TINY_MODEL = Path(__file__).resolve().parents[2] / "src" / "ftctl" / "resources" / "tiny-phi3"
KEY = "reliability-load-test-key-0123456789"
TOTAL, CLIENTS = 2000, 16
WORDS = ["the", "model", "answers", "what", "user", "asks", "about", "water", "time", "people", "city"]


# One torch thread per server process: with torch's default (a thread per core) sixteen concurrent
# requests on a 2-core machine oversubscribe it, 300 requests taking 30-70 s instead of 4 s (measured on
# a loaded 2-core machine). What the test checks (no 5xx, no dropped connection) does not depend on it.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}

Server = tuple[subprocess.Popen[bytes], int, Path]


def reason(payload: Any) -> str:
    """The error message: {"error": "..."} (scoring) or {"error": {"message": "..."}} (OpenAI)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) else ""


@dataclass
class Request:
    kind: str  # "valid", "malformed:<what>", "nokey", "badkey"
    body: bytes
    expect: int | tuple[int, ...]  # the status (or statuses) expected
    conversations: int = 1
    headers: dict[str, str] | None = None
    chunked: bool = False
    path: str = "/score"


def conversation(rng: random.Random) -> list[dict[str, str]]:
    turns = []
    for i in range(rng.choice([1, 1, 1, 3])):
        role = "user" if i % 2 == 0 else "assistant"
        turns.append({"role": role, "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))})
    if rng.random() < 0.2:
        turns.insert(0, {"role": "system", "content": "You are brief."})
    return turns


EXTREME: list[dict[str, Any]] = [
    {"temperature": 1e-300, "do_sample": True},
    {"temperature": 1e30, "do_sample": True},
    {"top_p": 1e-300, "do_sample": True},
    {"top_k": 10**12, "do_sample": True},
    {"repetition_penalty": 1e-3, "do_sample": True, "temperature": 1e-5},
    {"repetition_penalty": 1e3},
    {"seed": 2**64 - 1},
]


def valid(rng: random.Random) -> Request:
    many = rng.random() < 0.1
    convs = [conversation(rng) for _ in range(rng.randint(2, 3) if many else 1)]
    parameters: dict[str, Any] = {"max_new_tokens": rng.randint(1, 3), "do_sample": rng.random() < 0.5}
    if rng.random() < 0.5:
        parameters.update(temperature=round(rng.uniform(0, 1.5), 2), top_p=round(rng.uniform(0.05, 1), 2))
    if rng.random() < 0.2:
        parameters["seed"] = rng.randint(0, 2**31)
    if rng.random() < 0.1:
        parameters["top_k"] = rng.randint(0, 50)
    if rng.random() < 0.03:  # extreme but valid: answered (greedy below a tiny temperature), never a 5xx
        parameters.update(rng.choice(EXTREME))
    body = {"input_data": {"input_string": convs, "parameters": parameters}, "params": {}}
    return Request("valid", json.dumps(body).encode(), 200, conversations=len(convs))


def scoring(parameters: Any = None, input_string: Any = None, **top: Any) -> bytes:
    default = [[{"role": "user", "content": "hi"}]]
    data: dict[str, Any] = {"input_string": default if input_string is None else input_string}
    if parameters is not None:
        data["parameters"] = parameters
    return json.dumps({"input_data": data, **top}).encode()


USER = {"role": "user", "content": "hello"}
MALFORMED: list[tuple[str, bytes, int | tuple[int, ...]]] = [
    ("not-json", b'{"input_data": {"input_string": [[{"role": "user", "content": "hi"}]]', 400),
    ("empty-body", b"", 400),
    ("not-utf8", b'{"input_data": "\xff\xfe\xfd"}', 400),
    ("body-is-a-list", b"[1, 2, 3]", 400),
    ("body-is-null", b"null", 400),
    ("no-input-data", b'{"inputs": {"input_string": [[{"role": "user", "content": "hi"}]]}}', 400),
    ("input-data-is-a-string", b'{"input_data": "What is the capital of France?"}', 400),
    ("no-input-string", b'{"input_data": {"parameters": {}}}', 400),
    ("input-string-empty", scoring(input_string=[]), 400),
    ("input-string-is-text", scoring(input_string="hi there"), 400),
    ("message-without-role", scoring(input_string=[[{"content": "hi"}]]), 400),
    ("message-bad-role", scoring(input_string=[[{"role": "wizard", "content": "hi"}]]), 400),
    ("content-is-a-number", scoring(input_string=[[{"role": "user", "content": 42}]]), 400),
    ("mixed-conversation-shapes", scoring(input_string=[[USER], USER]), 400),
    ("parameters-is-a-list", scoring(parameters=[1, 2]), 400),
    ("params-is-a-string", scoring(params="seed=1"), 400),
    ("unknown-parameter", scoring(parameters={"max_tokens": 5}), 400),
    ("temperature-is-text", scoring(parameters={"temperature": "hot"}), 400),
    ("temperature-negative", scoring(parameters={"temperature": -1}), 400),
    ("top-k-negative", scoring(parameters={"top_k": -1}), 400),
    (
        "temperature-nan",
        b'{"input_data": {"input_string": [[{"role": "user", "content": "hi"}]], '
        b'"parameters": {"temperature": NaN}}}',
        400,
    ),
    ("top-p-zero", scoring(parameters={"top_p": 0}), 400),
    ("top-p-five", scoring(parameters={"top_p": 5}), 400),
    ("max-new-tokens-zero", scoring(parameters={"max_new_tokens": 0}), 400),
    ("max-new-tokens-absurd", scoring(parameters={"max_new_tokens": 10**9}), 400),
    ("max-new-tokens-float", scoring(parameters={"max_new_tokens": 2.5}), 400),
    ("do-sample-is-text", scoring(parameters={"do_sample": "yes"}), 400),
    ("seed-negative", scoring(parameters={"seed": -3}), 400),
    ("seed-absurd", scoring(parameters={"seed": 2**70, "max_new_tokens": 1}), 400),
    ("repetition-penalty-tiny", scoring(parameters={"repetition_penalty": 1e-300, "do_sample": True}), 400),
    (
        "repetition-penalty-infinite",
        b'{"input_data": {"input_string": [[{"role": "user", "content": "hi"}]],'
        b' "parameters": {"repetition_penalty": Infinity}}}',
        400,
    ),  # fmt: skip
    ("deeply-nested-json", b"[" * 100_000 + b"]" * 100_000, 400),
    ("deeply-nested-input", b'{"input_data": {"input_string": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}", 400),
    ("prompt-too-long", scoring(input_string=[[{"role": "user", "content": "word " * 30_000}]]), 400),
    ("too-many-conversations", scoring(input_string=[[USER]] * 5000, parameters={"max_new_tokens": 1}), 400),
    ("body-over-8mb", b'{"input_data": "' + b"x" * (9 * 1024 * 1024) + b'"}', 413),
]


# The same server's OpenAI-compatible route shares the body handling: a few malformed requests there too.
OPENAI = "/v1/chat/completions"
OPENAI_MALFORMED: list[tuple[str, bytes, int]] = [
    ("openai-deeply-nested", b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
    ("openai-no-messages", b'{"model": "ftctl", "max_tokens": 2}', 400),
    ("openai-not-json", b'{"messages": [', 400),
]


def plan() -> list[Request]:
    rng = random.Random("endpoint-load")
    requests = [valid(rng) for _ in range(TOTAL * 85 // 100)]
    kinds = [(*m, "/score") for m in MALFORMED] + [(*m, OPENAI) for m in OPENAI_MALFORMED]
    for i in range(TOTAL * 10 // 100 - 2):
        what, body, expect, path = kinds[i % len(kinds)]
        requests.append(Request(f"malformed:{what}", body, expect, path=path))
    for path in ("/score", OPENAI):
        big = b"x" * (9 * 1024 * 1024)
        requests.append(Request(f"malformed:chunked-over-8mb{path}", big, 413, chunked=True, path=path))
    for i in range(TOTAL - len(requests)):
        kind = "nokey" if i % 2 else "badkey"
        headers = {} if kind == "nokey" else {"Authorization": f"Bearer {KEY}x"}
        if i % 10 == 3:
            headers = {"Authorization": KEY}  # the key without the Bearer scheme
        requests.append(Request(kind, valid(rng).body, 401, headers=headers))
    rng.shuffle(requests)
    assert len(requests) == TOTAL
    return requests


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("endpoint")
    key_file = folder / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)
    with socket.socket() as probe:  # a free port; the server binds it itself (its own default host)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = folder / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftctl.backends.local.server", "--model-dir", str(TINY_MODEL),
             "--key-file", str(key_file), "--port", str(port), "--request-timeout-ms", "120000"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=base_env(ONE_THREAD),
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", 120, proc=proc)
        yield proc, port, log
    finally:
        kill_group(proc)


def send(port: int, request: Request) -> tuple[int, bytes]:
    """One request on its own connection. A dropped connection raises (and fails the test)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    headers = {"Content-Type": "application/json"}
    if request.headers is None:
        headers["Authorization"] = f"Bearer {KEY}"
    else:
        headers.update(request.headers)
    try:
        if request.chunked:
            chunks = (request.body[i : i + 65536] for i in range(0, len(request.body), 65536))
            conn.request("POST", request.path, body=chunks, headers=headers, encode_chunked=True)
        else:
            conn.request("POST", request.path, body=request.body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_two_thousand_requests_from_sixteen_clients(server: Server) -> None:
    proc, port, log = server
    requests = plan()
    results: list[tuple[Request, int, bytes] | tuple[Request, str]] = [None] * TOTAL  # type: ignore[list-item]
    lock = threading.Lock()
    cursor = iter(range(TOTAL))

    def client() -> None:
        while True:
            with lock:
                index = next(cursor, None)
            if index is None:
                return
            try:
                status, body = send(port, requests[index])
                results[index] = (requests[index], status, body)
            except (OSError, http.client.HTTPException) as exc:  # a dropped connection, a crash
                results[index] = (requests[index], f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, name=f"client-{n}") for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    failures: list[str] = []
    statuses: Counter[str] = Counter()
    for result in results:
        if len(result) == 2:
            failures.append(f"{result[0].kind}: no answer ({result[1]})")
            continue
        request, status, body = result
        statuses[f"{request.kind.split(':')[0]} {status}"] += 1
        expected = request.expect if isinstance(request.expect, tuple) else (request.expect,)
        if status >= 500 or status not in expected:
            failures.append(f"{request.kind}: HTTP {status} (wanted {request.expect}): {body[:200]!r}")
            continue
        payload = json.loads(body)
        if status == 200:
            output = payload["output"]
            if request.conversations > 1:
                ok = isinstance(output, list) and len(output) == request.conversations
            else:
                ok = isinstance(output, str)
            if not ok:
                failures.append(f"{request.kind}: bad 200 body {body[:200]!r}")
        elif len(reason(payload)) < 10:
            failures.append(f"{request.kind}: HTTP {status} without a reason: {body[:200]!r}")
    assert not failures, f"{len(failures)} failures, e.g.:\n" + "\n".join(sorted(set(failures))[:30])
    print(f"\n{TOTAL} requests, {CLIENTS} clients: {dict(sorted(statuses.items()))}")
    assert sum(n for k, n in statuses.items() if k.startswith("malformed")) == TOTAL // 10
    assert statuses["nokey 401"] + statuses["badkey 401"] == TOTAL - TOTAL * 85 // 100 - TOTAL // 10

    # Still up, still answering, still only on 127.0.0.1; nothing blew up in its log.
    assert proc.poll() is None, "the server exited"
    status, body = send(port, valid(random.Random(1)))
    assert status == 200 and isinstance(json.loads(body)["output"], str)
    addresses = listening_addresses(proc.pid)
    assert addresses == [("127.0.0.1", port)], addresses
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and " 500 " not in text, text[-3000:]
    assert KEY not in text
