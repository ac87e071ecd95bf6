"""What the local endpoint tells a caller without the key names no filesystem path: not the workspace,
not the model folder (as given or resolved), not where the package is installed. That covers the
health routes (ready, loading, failed to load), 401s, 404s and 405s; the error bodies given with the key
(400, 404, 413) are held to the same rule.

The model folder sits under a workspace-like path with a distinctive name and is a symlink to the
shipped tiny Phi-3, so the resolved path is checked as well. The app runs in-process.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ftctl.backends.local.serving.app import ServerOptions, create_app
from ftctl.backends.local.serving.generation import Generator

TINY_MODEL = Path(__file__).resolve().parents[2] / "src" / "ftctl" / "resources" / "tiny-phi3"
KEY = "paths-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MARK = "ws-Zq7-private"  # the distinctive folder name: it must never show
CONV = [{"role": "user", "content": "hi"}]
# Anything that looks like an absolute POSIX path of two components or more.
ABSOLUTE = re.compile(r"(?<![\w.:])/[\w.@-]+/[\w.@/-]+")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp(MARK) / ".ftctl" / "endpoints" / "ep-1" / "model"
    folder.parent.mkdir(parents=True)
    folder.symlink_to(TINY_MODEL, target_is_directory=True)
    return folder


def secrets_of(model_dir: Path) -> list[str]:
    return [
        MARK,
        str(model_dir),
        str(model_dir.resolve()),
        str(TINY_MODEL),
        str(Path.cwd()),
        str(Path.home()),
    ]


def assert_no_path(response: Any, model_dir: Path) -> None:
    shown = response.text + " " + json.dumps(dict(response.headers))
    for secret in secrets_of(model_dir):
        assert secret not in shown, (
            f"{response.request.method} {response.request.url.path} shows {secret}: {shown}"
        )
    assert not ABSOLUTE.search(shown), f"{response.request.url.path} shows a path: {shown}"


def unauthenticated(client: TestClient) -> list[Any]:
    """Every kind of answer a caller without the key can get."""
    body = json.dumps({"input_data": {"input_string": [CONV]}})
    chat = json.dumps({"messages": CONV})
    return [
        client.get("/health/live"),
        client.get("/health/ready"),
        client.head("/health/ready"),
        client.post("/score", content=body),
        client.post("/score", content=body, headers={"Authorization": "Bearer wrong"}),
        client.post("/score", content="{not json", headers={"Authorization": KEY}),
        client.get("/v1/models"),
        client.post("/v1/chat/completions", content=chat, headers={"Authorization": "Bearer wrong"}),
        client.get("/score"),  # 405
        client.post("/health/live"),  # 405
        client.options("/score"),
        client.get("/nowhere"),  # 404
        client.get("/../../etc/passwd"),
        client.get(f"/{MARK}"),
        client.get("/docs"),
        client.get("/openapi.json"),
        client.get("/health/ready?verbose=1"),
    ]


def wait_until(predicate: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    app = create_app(model_dir, key=KEY, options=ServerOptions(request_timeout_s=30, model_name="tiny:3"))
    with TestClient(app) as test_client:
        wait_until(lambda: test_client.get("/health/ready").status_code == 200)
        yield test_client


def test_a_ready_endpoint_shows_no_path_without_the_key(client: TestClient, model_dir: Path) -> None:
    ready = client.get("/health/ready")
    assert ready.json() == {"status": "ready", "model": "tiny:3"}  # the model id, not its folder
    for response in unauthenticated(client):
        assert response.status_code in (200, 401, 404, 405), response.text
        assert_no_path(response, model_dir)


def test_error_bodies_with_the_key_show_no_path(client: TestClient, model_dir: Path) -> None:
    long_prompt = json.dumps({"input_data": {"input_string": [[{"role": "user", "content": "x " * 3000}]]}})
    responses = [
        client.post("/score", content="{bad", headers=AUTH),
        client.post("/score", content=json.dumps({"input_data": {"input_string": 5}}), headers=AUTH),
        client.post("/score", content=long_prompt, headers=AUTH),
        client.post("/score", content=b"x" * (8 * 1024 * 1024 + 1), headers=AUTH),  # 413
        client.post(
            "/v1/chat/completions", content=json.dumps({"model": "nope", "messages": CONV}), headers=AUTH
        ),
        client.post("/v1/chat/completions", content=json.dumps({"messages": []}), headers=AUTH),
    ]
    assert [r.status_code for r in responses] == [400, 400, 400, 413, 404, 400]
    for response in responses:
        assert_no_path(response, model_dir)


def test_a_loading_endpoint_shows_no_path(model_dir: Path) -> None:
    release = threading.Event()

    class Slow(Generator):
        def load(self) -> None:
            release.wait(10)
            self.model = object()

    app = create_app(model_dir, key=KEY, generator=Slow(model_dir))
    with TestClient(app) as test_client:
        try:
            loading = test_client.get("/health/ready")
            assert loading.status_code == 503 and loading.json() == {"status": "loading"}
            for response in unauthenticated(test_client):
                assert_no_path(response, model_dir)
        finally:
            release.set()


@pytest.mark.parametrize("broken", ["missing", "bad-config", "no-weights"])
def test_a_model_that_failed_to_load_shows_no_path(tmp_path: Path, broken: str) -> None:
    """The failure says what is wrong (the server log has the paths), but not where."""
    model_dir = tmp_path / MARK / "model"
    if broken != "missing":
        model_dir.mkdir(parents=True)
        for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
            (model_dir / name).write_bytes((TINY_MODEL / name).read_bytes())
        if broken == "bad-config":
            (model_dir / "config.json").write_text("{not json")
    app = create_app(model_dir, key=KEY)
    with TestClient(app) as test_client:
        wait_until(lambda: app.state.load_error is not None, 30)
        failed = test_client.get("/health/ready")
        assert failed.status_code == 503 and failed.json()["status"] == "failed"
        assert failed.json()["error"]  # still says what went wrong
        if broken == "missing":
            assert "not a model folder" in failed.json()["error"]
        for response in [failed, *unauthenticated(test_client)]:
            assert_no_path(response, model_dir)
        scored = test_client.post("/score", content="{}", headers=AUTH)
        assert scored.status_code == 503
        assert_no_path(scored, model_dir)
