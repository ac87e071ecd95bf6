"""Secrets: after a run through training, registration, deployment and scoring, neither the endpoint key
nor any token from the environment appears in the state file, the logs, MLflow (params, tags,
descriptions, and the SQLite file itself), any other workspace file, the server's command line or
environment, or what the commands print.

The run gets canary tokens in its environment (HF_TOKEN, AZURE_CLIENT_SECRET, ...), as a user's shell
would have them.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

from .conftest import Workspace

CANARIES = {
    "HF_TOKEN": "hf_canaryTokenForFtctlReliability0001",
    "HUGGING_FACE_HUB_TOKEN": "hf_canaryTokenForFtctlReliability0002",
    "AZURE_CLIENT_SECRET": "azure-canary-secret-ftctl-0003",
    "MLFLOW_TRACKING_TOKEN": "mlflow-canary-token-ftctl-0004",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-canary-password-ftctl-0005",
    "OPENAI_API_KEY": "sk-canary-ftctl-reliability-0006",
}


def files_outside_secrets(ws: Path) -> list[Path]:
    return [p for p in sorted(ws.rglob("*")) if p.is_file() and "secrets" not in p.relative_to(ws).parts]


def test_no_secret_leaks_anywhere(shared_ws: Workspace) -> None:
    w = shared_ws
    w.restore("prepared")
    outputs = [w.run("run", "--to", "score", env=CANARIES)]
    deploy = w.record("deploy")["outputs"]
    key_file = Path(deploy["key_file"])
    key = key_file.read_text().strip()
    assert len(key) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((w.ws / "secrets").stat().st_mode) == 0o700
    # The running server holds the key in neither its command line nor its environment.
    pid = deploy["pid"]
    assert key not in "\0".join(Path(f"/proc/{pid}/cmdline").read_text().split("\0"))
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert key.encode() not in environ
    # ...while the canaries did reach the processes ftctl started (so their absence below means something).
    assert CANARIES["HF_TOKEN"].encode() in environ
    outputs += [w.run("--json", "status", env=CANARIES), w.run("status", env=CANARIES)]
    outputs += [w.run("score", env=CANARIES), w.run("--json", "score", env=CANARIES)]
    outputs.append(w.run("teardown", env=CANARIES))
    secrets = [key, *CANARIES.values()]

    printed = "".join(o.stdout + o.stderr for o in outputs)
    assert "output: " in printed  # the outputs captured are the real ones
    for secret in secrets:
        assert secret not in printed, "a secret was printed"

    # Every file of the workspace but secrets/: state, backup, logs, events, specs, MLflow's SQLite
    # file and artifacts, the scoring request.
    scanned = files_outside_secrets(w.ws)
    names = {p.name for p in scanned}
    assert {"state.json", "state.json.bak", "log.txt", "server.log", "mlflow.db", "spec.json"} <= names
    for path in scanned:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"a secret is in {path.relative_to(w.ws)}"

    # MLflow, through its client: every run's params and tags, every registered version's tags and
    # description.
    seen = mlflow_text(w.ws)
    assert "ftctl.job_id" in seen and "learning_rate" in seen  # the query found the real records
    for secret in secrets:
        assert secret not in seen, "a secret is in MLflow"


def mlflow_text(ws: Path) -> str:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws / 'mlflow.db'}",
                                 registry_uri=f"sqlite:///{ws / 'mlflow.db'}")  # fmt: skip
    parts = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            parts.append(json.dumps({"params": run.data.params, "tags": run.data.tags}))
    for version in client.search_model_versions():
        parts.append(json.dumps({"tags": version.tags, "description": version.description}))
    return "\n".join(parts)
