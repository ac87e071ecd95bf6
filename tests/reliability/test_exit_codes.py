"""The exit-code contract (README, "Chaining stages in a shell script"): 0 success, 1 a failure at run
time (an endpoint that is down, a port in use, a name that does not resolve, an unreachable hub), 2 bad
input (config, arguments, data, a stage whose upstream has not succeeded). One row per case; each also
checks the message is one line of ftctl's own, not a traceback."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ftctl.errors import FtctlError


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def down_endpoint(workspace: Path) -> None:
    """A workspace whose deploy succeeded, and whose endpoint's server has since ended."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    port = closed_port()
    url = f"http://127.0.0.1:{port}"
    outputs = {
        "endpoint_name": "ultrachat-completion-1", "deployment_name": "demo", "url": url,
        "scoring_uri": f"{url}/score", "host": "127.0.0.1", "port": port, "pid": ended.pid,
        "key_file": str(workspace / "secrets" / "ultrachat-completion-1.key"),
        "model_uri": "models:/m/1", "model_version": "1",
    }  # fmt: skip
    record = {"status": "succeeded", "attempt": 1, "outputs": outputs, "fingerprint": None, "error": None}
    workspace.mkdir(parents=True)
    state = {"schema_version": 1, "backend": "local", "run_id": "r", "stages": {"deploy": record}}
    (workspace / "state.json").write_text(json.dumps(state))


def nothing(workspace: Path) -> None:
    pass


def damaged_store(workspace: Path) -> None:
    """MLflow's store overwritten with something that is not an SQLite database."""
    workspace.mkdir(parents=True)
    (workspace / "mlflow.db").write_bytes(b"not a database\n" * 256)


CLI_CASES: list[tuple[str, Callable[[Path], None], list[str], int, str]] = [
    # (case, setup, argv, exit code, in stderr)
    ("help", nothing, ["--help"], 0, ""),
    ("status of a new workspace", nothing, ["status"], 0, ""),
    ("teardown with nothing deployed", nothing, ["teardown"], 0, "nothing to tear down"),
    ("config show", nothing, ["config", "show"], 0, ""),
    ("unknown config key", nothing, ["--set", "finetune.lr=1", "status"], 2, "unknown key"),
    ("value out of range", nothing, ["config", "set", "deploy.port", "99999"], 2, "deploy.port"),
    ("unknown backend", nothing, ["--backend", "gcp", "status"], 2, "--backend must be"),
    ("unknown option", nothing, ["status", "--no-such-option"], 2, "No such option"),
    ("upstream not run", nothing, ["submit"], 2, "submit needs check-compute"),
    ("no endpoint deployed", nothing, ["credentials"], 2, "there is no endpoint"),
    ("azureml on local defaults", nothing, ["--backend", "azureml", "run"], 2, "model.name is"),
    ("init from a missing file", nothing, ["init", "--from", "no/such.yaml"], 2, "no such file"),
    ("endpoint down: credentials", down_endpoint, ["credentials"], 1, "is not running"),
    ("endpoint down: chat", down_endpoint, ["chat"], 1, "is not running"),
    ("endpoint down: score --file", down_endpoint, ["score", "--file", "-"], 1, "is not running"),
    ("damaged MLflow store", damaged_store, ["auth"], 2, "mlflow.db is damaged (file is not a database)"),
]


@pytest.mark.parametrize(
    ("setup", "argv", "code", "said"), [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES]
)
def test_exit_codes(ftctl: Any, setup: Callable[[Path], None], argv: list[str], code: int, said: str) -> None:
    setup(ftctl.workspace)
    result = ftctl(*argv, code=code)
    assert said in result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr


def test_a_hub_model_without_the_hub_is_a_runtime_failure(ftctl: Any) -> None:
    """HF_HUB_OFFLINE is set for the suite: the hub cannot be reached, and that is not bad input."""
    ftctl("auth")
    result = ftctl("pick-model", "--model", "org/not-here", code=1)
    assert "the Hugging Face hub is unreachable" in result.stderr


def test_a_port_in_use_and_a_host_that_does_not_resolve_are_runtime_failures() -> None:
    from ftctl.backends.local.stages.deploy import _listen

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(FtctlError) as in_use:
            _listen("127.0.0.1", port).close()
    assert in_use.value.exit_code == 1 and f"127.0.0.1:{port}" in in_use.value.message
    with pytest.raises(FtctlError) as unresolved:
        _listen("no-such-host.invalid", 0).close()
    assert unresolved.value.exit_code == 1 and "no-such-host.invalid" in unresolved.value.message
