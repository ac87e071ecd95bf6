"""The local scoring endpoint (ftctl.backends.local.server) on a tiny random Phi-3."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ftctl.backends.local.serving.app import ServerOptions, create_app
from ftctl.backends.local.serving.generation import Generator
from ftctl.backends.local.serving.probe import port_is_open, wait_until_ready
from ftctl.backends.local.serving.request import GenerationTimeout, normalize_parameters
from ftctl.errors import StageFailed
from ftctl.scoring import build_request, parse_response
from harness import spawn_server

KEY = "k3y-0123456789abcdef-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
GREEDY = {"do_sample": False, "max_new_tokens": 12}
CONV = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


def _wait_ready(client: TestClient, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/health/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/health/ready').json()}")


@pytest.fixture(scope="module")
def client(tiny_model_dir: Path) -> Iterator[TestClient]:
    app = create_app(tiny_model_dir, key=KEY, options=ServerOptions(request_timeout_s=30))
    with TestClient(app) as test_client:
        _wait_ready(test_client)
        yield test_client


def _score(client: TestClient, body: Any, headers: dict[str, Any] | None = None) -> Any:
    return client.post("/score", content=json.dumps(body), headers=AUTH if headers is None else headers)


def test_health(client: TestClient, tiny_model_dir: Path) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    response = client.get("/health/ready")
    assert response.status_code == 200
    # the model's id (by default its folder's name), never its path: the route needs no key
    assert response.json() == {"status": "ready", "model": tiny_model_dir.name}


def test_ready_only_after_load(tmp_path: Path) -> None:
    release = threading.Event()

    class Blocked(Generator):
        def load(self) -> None:
            release.wait(10)
            self.model = object()

    app = create_app(tmp_path, key=KEY, generator=Blocked(tmp_path))
    with TestClient(app) as test_client:
        assert test_client.get("/health/live").status_code == 200
        not_ready = test_client.get("/health/ready")
        assert not_ready.status_code == 503 and not_ready.json() == {"status": "loading"}
        assert _score(test_client, build_request(CONV, GREEDY)).status_code == 503
        release.set()
        _wait_ready(test_client, 5)


def test_failed_load_is_reported(tmp_path: Path) -> None:
    app = create_app(tmp_path / "nothing-here", key=KEY)
    with TestClient(app) as test_client:
        deadline = time.monotonic() + 10
        while app.state.load_error is None and time.monotonic() < deadline:
            time.sleep(0.02)
        response = test_client.get("/health/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "failed"
        assert "not a model folder" in response.json()["error"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer ünïcode".encode("latin-1")},
    ],
)
def test_score_requires_the_key(client: TestClient, headers: dict[str, Any]) -> None:
    response = _score(client, build_request(CONV, GREEDY), headers=headers)
    assert response.status_code == 401
    assert "key" in response.json()["error"]


def test_score_greedy_is_deterministic(client: TestClient) -> None:
    first = _score(client, build_request(CONV, GREEDY))
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"output"} and isinstance(body["output"], str)
    assert "<|" not in body["output"]  # special tokens are skipped
    second = _score(client, build_request(CONV, GREEDY))
    assert second.json() == body
    assert parse_response(first.content) == body["output"]


def test_score_with_seed_is_reproducible(client: TestClient) -> None:
    params = {"temperature": 1.0, "top_p": 0.95, "do_sample": True, "max_new_tokens": 12, "seed": 3}
    outputs = {_score(client, build_request(CONV, params)).json()["output"] for _ in range(2)}
    assert len(outputs) == 1
    body = build_request(CONV, {k: v for k, v in params.items() if k != "seed"})
    body["params"] = {"seed": 3}
    assert _score(client, body).json()["output"] in outputs


def test_default_parameters_and_extras(client: TestClient) -> None:
    body = {"input_data": {"input_string": [CONV]}}  # no parameters, no params
    assert isinstance(_score(client, body).json()["output"], str)
    extra = {**GREEDY, "top_k": 5, "repetition_penalty": 1.2, "temperature": 0.0}
    assert isinstance(_score(client, build_request(CONV, extra)).json()["output"], str)


def test_flat_message_list(client: TestClient) -> None:
    nested = _score(client, build_request(CONV, GREEDY)).json()
    flat = _score(client, {"input_data": {"input_string": CONV, "parameters": GREEDY}, "params": {}})
    assert flat.status_code == 200
    assert flat.json() == nested


def test_several_conversations(client: TestClient) -> None:
    other = [{"role": "user", "content": "what is the time"}]
    body = {"input_data": {"input_string": [CONV, other, CONV], "parameters": GREEDY}}
    response = _score(client, body)
    assert response.status_code == 200
    outputs = response.json()["output"]
    assert isinstance(outputs, list) and len(outputs) == 3 and all(isinstance(o, str) for o in outputs)
    assert parse_response(response.content) == outputs[0]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "JSON object"),
        ({"inputs": "x"}, "input_data"),
        ({"input_data": {"parameters": {}}}, "input_string"),
        ({"input_data": {"input_string": [[{"role": "robot", "content": "x"}]]}}, "role"),
        ({"input_data": {"input_string": [CONV], "parameters": "hot"}}, "parameters"),
        ({"input_data": {"input_string": [CONV], "parameters": {"max_new_tokens": "10"}}}, "max_new_tokens"),
        ({"input_data": {"input_string": [CONV], "parameters": {"top_p": 2}}}, "top_p"),
        ({"input_data": {"input_string": [CONV], "parameters": {"do_sample": 1}}}, "do_sample"),
        ({"input_data": {"input_string": [CONV]}, "params": []}, "params"),
    ],
)
def test_bad_body_is_400(client: TestClient, body: Any, fragment: str) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = client.post("/score", content=content, headers=AUTH)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


def test_unknown_parameters_are_named(client: TestClient) -> None:
    response = _score(client, build_request(CONV, {**GREEDY, "beams": 2, "return_full_text": False}))
    assert response.status_code == 400
    assert "beams" in response.json()["error"] and "return_full_text" in response.json()["error"]


def test_prompt_too_long_is_400(client: TestClient) -> None:
    long_conv = [{"role": "user", "content": "word " * 600}]
    response = _score(client, build_request(long_conv, GREEDY))
    assert response.status_code == 400
    assert "tokens" in response.json()["error"]


def test_timeout_is_504(tmp_path: Path) -> None:
    class Slow(Generator):
        def load(self) -> None:
            self.model = object()

        def generate(self, conversations, params, *, deadline=None, cancel=None):  # type: ignore[no-untyped-def]
            assert cancel is not None
            cancel.wait(5)
            raise GenerationTimeout("cancelled")

    app = create_app(
        tmp_path, key=KEY, options=ServerOptions(request_timeout_s=0.2), generator=Slow(tmp_path)
    )
    with TestClient(app) as test_client:
        _wait_ready(test_client, 5)
        started = time.monotonic()
        response = _score(test_client, build_request(CONV, GREEDY))
        assert response.status_code == 504
        assert response.json() == {"error": "request timed out after 200 ms"}
        assert time.monotonic() - started < 3


def test_generation_stops_at_the_deadline(client: TestClient) -> None:
    generator: Generator = client.app.state.generator  # type: ignore[attr-defined]
    settings = normalize_parameters({"do_sample": False, "max_new_tokens": 400})
    with pytest.raises(GenerationTimeout):
        generator.generate([CONV], settings, deadline=time.monotonic())
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(GenerationTimeout):
        generator.generate([CONV], settings, cancel=cancel)
    # the lock was released: the next request goes through
    assert _score(client, build_request(CONV, GREEDY)).status_code == 200


def test_deployment_header_is_echoed(client: TestClient) -> None:
    response = _score(
        client, build_request(CONV, GREEDY), headers={**AUTH, "azureml-model-deployment": "blue"}
    )
    assert response.headers["azureml-model-deployment"] == "blue"
    assert "azureml-model-deployment" not in _score(client, build_request(CONV, GREEDY)).headers


def _model_ms(response: Any) -> float:
    name, _, duration = response.headers["server-timing"].partition(";dur=")
    assert name == "model"
    return float(duration)


def test_replies_report_the_model_time(client: TestClient) -> None:
    """Server-Timing: the model thread's share of the request, so a client can tell the endpoint's own
    time (HTTP, JSON, the key, batching) from the model's (bench/endpoint.py measures it this way)."""
    started = time.perf_counter()
    response = _score(client, build_request(CONV, GREEDY))
    wall_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200
    assert 0 < _model_ms(response) < wall_ms
    several = {"input_data": {"input_string": [CONV, CONV], "parameters": GREEDY}}
    assert _model_ms(_score(client, several)) > 0
    assert "server-timing" not in _score(client, {"inputs": "x"}).headers  # no model time on an error


def test_a_batched_share_keeps_its_batch_time() -> None:
    from ftctl.backends.local.serving.generation import Replies

    replies = Replies(["a", "b", "c"], model_s=0.25)
    share = replies[1:3]
    assert share == ["b", "c"] and share.model_s == 0.25
    assert replies[0] == "a" and json.dumps({"output": replies}) == '{"output": ["a", "b", "c"]}'


def test_key_never_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    _score(client, build_request(CONV, GREEDY))
    _score(client, build_request(CONV, GREEDY), headers={"Authorization": f"Bearer {KEY}x"})
    _score(client, "{bad", headers=AUTH)
    lines = [r.getMessage() for r in caplog.records if r.name == "ftctl.server"]
    assert any(line.startswith("POST /score 200 ") for line in lines)
    assert any(line.startswith("POST /score 401 ") for line in lines)
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err):
        assert KEY not in text and "Bearer" not in text


def test_create_app_rejects_an_empty_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        create_app(tmp_path, key="")


def test_wait_until_ready_reports_an_exited_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"])
    proc.wait()
    with pytest.raises(StageFailed, match="code 7"):
        wait_until_ready("http://127.0.0.1:9", 5, proc=proc)


def test_wait_until_ready_times_out() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StageFailed, match="not ready"):
        wait_until_ready(f"http://127.0.0.1:{port}", 0.5)
    assert time.monotonic() - started < 3


@pytest.mark.integration  # a real server process
def test_real_process_on_an_inherited_socket(tiny_model_dir: Path, tmp_path: Path) -> None:
    # An MLflow-style folder: the Hugging Face files under artifacts/hf_model.
    mlflow_dir = tmp_path / "mlflow_model"
    (mlflow_dir / "artifacts").mkdir(parents=True)
    (mlflow_dir / "MLmodel").write_text("flavors: {}\n")
    (mlflow_dir / "artifacts" / "hf_model").symlink_to(tiny_model_dir, target_is_directory=True)
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    log_path = tmp_path / "server.log"

    proc, port = spawn_server(mlflow_dir, key_file, log_path, "--request-timeout-ms", "30000")
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", 60, proc=proc)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/score",
            data=json.dumps(build_request(CONV, GREEDY)).encode(),
            headers={**AUTH, "Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            assert response.status == 200
            text = parse_response(response.read())
        assert isinstance(text, str)
    finally:
        proc.terminate()
        proc.wait(15)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean stop.
    assert proc.returncode in (0, -signal.SIGTERM)
    assert not port_is_open("127.0.0.1", port)
    log = log_path.read_text()
    assert "POST /score 200" in log
    assert KEY not in log
