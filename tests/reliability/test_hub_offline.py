"""Hub ids without a hub fail fast with ftctl's own message, not after tens of seconds of library retries.

Traffic stays on this machine: the hub endpoint is pointed at a closed port on 127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import Ftctl

from .conftest import base_env


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ftctl(ws: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftctl", "--workspace", str(ws), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "option", "hub_id"),
    [
        ("prepare-data", "--dataset", "HuggingFaceH4/ultrachat_200k"),
        ("pick-model", "--model", "microsoft/Phi-3-mini-4k-instruct"),
    ],
)
@pytest.mark.parametrize("how", ["unreachable", "offline"])
def test_a_hub_id_without_the_hub_fails_fast(
    tmp_path: Path, stage: str, option: str, hub_id: str, how: str, prepared_ws: Ftctl
):
    env = {k: v for k, v in base_env().items() if not k.endswith("_OFFLINE")}
    if how == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    ws = Ftctl(tmp_path).load(prepared_ws).workspace  # `ftctl auth` done (and the rest up to prepare-data)
    done = ftctl(ws, stage, option, hub_id, env=env)
    assert done.returncode == 1, done.stderr  # the network, not the input: a runtime failure
    assert "Hugging Face hub is unreachable" in done.stderr and hub_id in done.stderr
    assert "Traceback" not in done.stderr and "Retrying" not in done.stderr
    # ftctl's own check answered, before any library call (no timing assert: machines are noisy).
    wanted = "switched off (HF_HUB_OFFLINE=1)" if how == "offline" else "no connection to 127.0.0.1"
    assert wanted in done.stderr, done.stderr
