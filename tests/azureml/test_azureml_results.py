"""`ftctl credentials`, `ftctl chat`, `ftctl score --file` and `ftctl metrics` on Azure ML, against the
fake service (ARM for the endpoint and its keys, the scoring URI, the workspace's MLflow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from fakes.azureml import ENDPOINT_KEY, LOCATION

HERE = Path(__file__).resolve().parent


def test_credentials_from_the_endpoint_and_its_keys(az) -> None:
    az("run", "--to", "deploy")
    creds = az.json("credentials")
    name = az.outputs("deploy")["endpoint_name"]
    assert creds == {
        "endpoint_name": name,
        "deployment_name": "demo",
        "scoring_uri": f"https://{name}.{LOCATION}.inference.ml.azure.com/score",
        "primary_key": ENDPOINT_KEY,
        "openai_base_url": None,
        "model": f"Phi-4-ultrachat-200k:{az.outputs('register')['version']}",
    }
    assert az.service.find("POST", rf"/onlineEndpoints/{name}/listKeys$")
    assert ENDPOINT_KEY not in (az.workspace / "state.json").read_text()
    text = az("credentials")
    assert f"primary_key      {ENDPOINT_KEY}" in text.stdout.splitlines()
    assert "keep the key secret" in text.stderr


def _scored(service) -> list:
    return [r for r in service.requests if r.host.endswith(".inference.ml.azure.com")]


def test_chat_and_score_file_post_the_scoring_contract(az) -> None:
    az("run", "--to", "deploy")
    service = az.service
    name = az.outputs("deploy")["endpoint_name"]
    before = len(_scored(service))
    # Every documented response shape parses; the conversation carries the history, /reset clears it.
    replies = iter(['{"output": "Paris."}', '[{"0": "Rome."}]', '"Five."'])
    real = service._score

    def score(r):
        service.score_body = next(replies)
        return real(r)

    service._score = score
    chat = az.piped(
        "chat", "--temperature", "0", input="Capital of France?\nAnd of Italy?\n/reset\n2 plus 3?\n/exit\n"
    )
    answers = [line for line in chat.stdout.splitlines() if line.startswith("assistant> ")]
    assert answers == ["assistant> Paris.", "assistant> Rome.", "assistant> Five."]
    sent = _scored(service)[before:]
    assert len(sent) == 3
    for r in sent:
        assert r.method == "POST" and r.host == f"{name}.{LOCATION}.inference.ml.azure.com"
        assert r.path == "/score" and r.auth == "Bearer endpoint-key"
        assert {k.lower(): v for k, v in r.headers.items()}["azureml-model-deployment"] == "demo"
        assert set(r.body) == {"input_data", "params"}
        assert r.body["input_data"]["parameters"]["do_sample"] is False  # temperature 0: greedy
    second = sent[1].body["input_data"]["input_string"]
    assert second == [
        [
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy?"},
        ]
    ]
    assert sent[2].body["input_data"]["input_string"] == [[{"role": "user", "content": "2 plus 3?"}]]
    service._score = real

    # score --file: a bare conversation on stdin, then a full request from a file.
    service.score_body = '[{"output": "Blue."}]'
    result = az.piped("--json", "score", "--file", "-", input='[{"role": "user", "content": "Sky colour?"}]')
    data = json.loads(result.stdout)
    assert data["output"] == "Blue." and data["http_status"] == 200 and data["endpoint_name"] == name
    assert data["response"] == [{"output": "Blue."}]
    request = az.root / "request.json"
    body = {"input_data": {"input_string": [[{"role": "user", "content": "Hi"}]], "parameters": {}}}
    request.write_text(json.dumps(body))
    az("score", "--file", str(request))
    assert _scored(service)[-1].body == body
    assert az.state()["stages"]["score"]["status"] == "pending"  # score --file records nothing


def test_endpoint_commands_without_a_live_endpoint(az) -> None:
    az("run", "--to", "register")
    for args, stdin in ((["credentials"], ""), (["chat"], "hi\n"), (["score", "--file", "-"], "[]")):
        result = az.piped(*args, input=stdin, code=2)
        assert "there is no endpoint: deploy is pending" in result.stderr, args
        assert "`ftctl deploy`" in result.stderr
    az("deploy")
    name = az.outputs("deploy")["endpoint_name"]
    az.service.endpoints.pop(name)  # deleted outside ftctl (studio, az ml online-endpoint delete)
    result = az("credentials", code=2)
    assert f"the endpoint {name} no longer exists" in result.stderr
    assert "primary_key" not in az("--json", "credentials", code=2).stdout


def test_endpoint_errors_are_clean(az) -> None:
    az("run", "--to", "deploy")
    service = az.service
    service.score_status, service.score_body = 424, json.dumps({"message": "model crashed: CUDA OOM"})
    result = az.piped("score", "--file", "-", input='[{"role": "user", "content": "hi"}]', code=1)
    assert "the endpoint answered HTTP 424: model crashed: CUDA OOM" in result.stderr
    assert "Traceback" not in result.stderr
    service.score_status, service.score_body = 400, json.dumps({"error": {"message": "bad input_string"}})
    result = az.piped("chat", input="hi\n", code=2)
    assert "HTTP 400: bad input_string" in result.stderr
    # A busy endpoint (429) is retried by the pipeline, then answered.
    service.score_status, service.score_body = 200, '{"output": "ok"}'
    service.fail("POST", r"^/score$", 429, times=2)
    result = az.piped("chat", input="hi\n")
    assert "assistant> ok" in result.stdout
    assert len([r for r in _scored(service) if r.status == 429]) == 2


def test_metrics_of_the_finetune_step_through_mlflow(az, tracking, tmp_path) -> None:
    az("run", "--to", "submit")
    job = az.outputs("submit")["job_name"]
    png = tmp_path / "loss.png"
    data = az.json("metrics", "--plot", str(png))
    finetune = next(r for r in tracking.mlflow.runs.values() if r.run_name == "chat_completion_finetune")
    assert data["run_id"] == finetune.run_id and data["job_id"] == job
    assert data["status"] == "FINISHED"
    assert data["run_name"].endswith(" / chat_completion_finetune")
    assert data["tracking_uri"].startswith(f"azureml://{LOCATION}.api.azureml.ms/mlflow/v2.0/subscriptions/")
    assert data["experiment"] == "chat_completion_Phi-4"
    assert data["params"]["learning_rate"] == "5e-06" and data["params"]["lr_scheduler_type"] == "cosine"
    steps = {row["step"]: row for row in data["steps"]}
    assert sorted(steps) == [5, 10, 15, 20]
    assert [steps[s]["train_loss"] for s in (5, 10, 15, 20)] == [1.45, 1.3, 1.15, 1.0]
    assert steps[10]["eval_loss"] == 1.25 and steps[5]["eval_loss"] is None
    assert steps[10]["perplexity"] == pytest.approx(2.718281828**1.25)  # exp(eval_loss)
    assert steps[20]["learning_rate"] > 0 and steps[20]["epoch"] == 1.0
    assert data["summary"]["train_loss"] == 1.3 and data["summary"]["eval_loss"] == 1.0
    assert data["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The real mlflow client and the azureml-mlflow plugin sent it all, with ftctl's (fake) token.
    mlflow_calls = [r for r in tracking.requests if "/mlflow/v2.0/" in r.path]
    assert {r.host for r in mlflow_calls} == {f"{LOCATION}.api.azureml.ms"}
    assert {r.auth for r in mlflow_calls} == {"Bearer fake-token"}
    assert set(tracking.mlflow.searches) <= {f"tags.mlflow.parentRunId = '{job}'"} | {
        f"tags.mlflow.parentRunId = '{r.run_id}'" for r in tracking.mlflow.runs.values()
    }
    table = az("metrics").stdout.splitlines()
    assert table[0].startswith("run Phi-4-ultrachat-") and table[0].endswith("(FINISHED)")
    assert f"; job {job}" in table[1]
    assert table[-1].startswith("final: train_loss 1.3000, eval_loss 1.0000, perplexity 2.72")


def test_metrics_of_a_running_job_show_what_it_has(az, tracking) -> None:
    tracking.job_states = ["Queued"]
    az("run", "--to", "prepare-data")
    az("submit", "--no-wait")
    job = az.outputs("submit")["job_name"]
    data = az.json("metrics")
    assert data["run_id"] == job and data["steps"] == [] and data["status"] == "SCHEDULED"
    assert "has not reached its fine-tuning step yet" in az("metrics").stderr
    tracking.jobs[job]["properties"]["status"] = "Running"
    data = az.json("metrics")
    assert data["status"] == "RUNNING"
    assert [row["step"] for row in data["steps"]] == [5, 10]  # half of the steps so far
    assert "train_loss" not in data["summary"]
    assert az("metrics").stdout.splitlines()[0].endswith("(RUNNING)")


def test_metrics_without_a_job(az, tracking) -> None:
    az("run", "--to", "prepare-data")
    result = az("metrics", code=2)
    assert "no fine-tuning job to show: submit has not run" in result.stderr
    result = az("metrics", "--run", "no-such-job", code=2)
    assert "no MLflow run 'no-such-job' in the workspace yet" in result.stderr


def test_a_local_workspace_has_no_azure_endpoint_or_job(ftctl) -> None:
    ftctl.workspace.mkdir()
    state = {"schema_version": 1, "backend": "local", "run_id": None, "stages": {}}
    (ftctl.workspace / "state.json").write_text(json.dumps(state))
    for args in (["metrics"], ["credentials"]):
        result = ftctl("--backend", "azureml", *args, code=2)
        assert "holds a local run, but the backend is now azureml" in result.stderr, args


def _keys(value) -> object:
    """The key structure of a JSON value: dicts by key, a list by its first item's keys."""
    if isinstance(value, dict):
        return {k: _keys(v) for k, v in sorted(value.items()) if k not in ("params", "summary", "response")}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [_keys(value[0])]
    return None


def test_same_script_same_json_keys_on_both_backends(az, tracking) -> None:
    """The script record_local_outputs.py ran on the local backend (a real trained and served model),
    run here on Azure ML: the same JSON keys, down to the rows of the metric table. (params and summary
    hold what each trainer logged; the response body is the endpoint's own.)"""
    import importlib.util

    spec = importlib.util.spec_from_file_location("record_local_outputs", HERE / "record_local_outputs.py")
    assert spec is not None and spec.loader is not None
    recorder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recorder)
    local = json.loads(recorder.OUT.read_text())["outputs"]
    az("run", "--to", "deploy")
    for name, argv, stdin in recorder.SAME_SCRIPT:
        data = json.loads(az.piped("--json", *argv, input=stdin).stdout)
        assert _keys(data) == _keys(local[name]), name
        assert set(data) == set(local[name]), name
    assert local["credentials"]["openai_base_url"]  # local has an OpenAI route; Azure ML: null


def test_an_expired_endpoint_is_warned_about_and_torn_down_by_teardown_expired(az) -> None:
    """The cost guard on Azure ML: deploy --ttl records an expiry; past it every command warns, and
    `teardown --expired` (cron-safe) deletes the endpoint; before it, nothing is deleted."""
    from datetime import datetime, timedelta, timezone

    az("run", "--to", "register")
    assert "nothing to tear down" in az("teardown", "--expired").stderr  # no endpoint: a no-op
    az("deploy", "--ttl", "2h")
    name = az.outputs("deploy")["endpoint_name"]
    assert az.outputs("deploy")["expires_at"]
    shown = az("status").stdout
    assert "expires in 1h 59m" in shown or "expires in 2h" in shown
    assert "nothing to tear down" in az("teardown", "--expired").stderr
    assert name in az.service.endpoints
    state_file = az.workspace / "state.json"
    state = json.loads(state_file.read_text())
    past = datetime.now(timezone.utc) - timedelta(minutes=5)
    state["stages"]["deploy"]["outputs"]["expires_at"] = past.isoformat(timespec="seconds")
    state_file.write_text(json.dumps(state))
    assert f"endpoint {name} is past its expiry" in az("status").stderr
    az("teardown", "--expired")
    assert name not in az.service.endpoints
    assert "past its expiry" not in az("status").stderr
