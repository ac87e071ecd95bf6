"""The fine-tuning job route (finetune.route: job) against the fake Azure ML: configs/
azureml-phi4-mini-ultrachat.yaml fine-tunes Phi-4-mini-instruct with azure-ai-ml's create_finetuning_job
(serverless), records the model the job registered, serves it from a serverless endpoint, scores and
chats through its chat completions route and deletes it; the same nine stages and state file as the
pipeline route."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from fakes.azureml import ENDPOINT_KEY, LOCATION, WS_ID
from ftctl.pipeline import ORDER

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "azureml-phi4-mini-ultrachat.yaml"
JOB_PUT = r"/workspaces/[^/]+/jobs/[^/]+$"
SERVERLESS = r"/workspaces/[^/]+/serverlessEndpoints/[^/]+$"
WORKSPACE_ID = "8d2c6f4e-0c3b-4f2a-9b1d-7e6f5a4b3c2d"  # the fake workspace's workspaceId


@pytest.fixture
def job_route(az):
    """`ftctl --config configs/azureml-phi4-mini-ultrachat.yaml ...`, Phi-4-mini-instruct in the registry."""
    az.service.add_phi_family()
    real_args = az.args

    def args(*given: str) -> list[str]:
        argv = real_args(*given)
        argv[argv.index("--config") + 1] = str(CONFIG)
        return argv

    az.args = args
    return az


def _chat_calls(service) -> list:
    return [r for r in service.requests if r.host.endswith(".models.ai.azure.com")]


def test_a_model_on_the_job_route_runs_end_to_end(job_route) -> None:
    az, service = job_route, job_route.service
    result = az("run")
    state = az.state()
    assert [state["stages"][name]["status"] for name in ORDER] == ["succeeded"] * 9
    assert service.unhandled == []
    pick = az.outputs("pick-model")
    assert pick["route"] == "job" and pick["route_source"] == "finetune.route"
    assert "fine-tuning route: job" in result.stderr

    # check-compute: serverless, no cluster looked up or created.
    assert az.outputs("check-compute")["serverless"] is True
    assert not service.find("PUT", r"/computes/") and not service.find("GET", r"/computes/")

    # submit: one FineTuning job through create_finetuning_job, with validation data, serverless.
    put = service.one("PUT", JOB_PUT)
    props = put.body["properties"]
    assert props["jobType"] == "FineTuning"
    assert "computeId" not in props  # serverless
    details = props["fineTuningDetails"]
    assert details["taskType"] == "chatCompletion" and details["modelProvider"] == "Custom"
    assert details["model"] == {
        "uri": "azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1",
        "jobInputType": "mlflow_model",
    }
    for key, split in (("trainingData", "train_sft"), ("validationData", "test_sft")):
        assert details[key]["jobInputType"] == "uri_file"
        assert re.fullmatch(
            rf"azureml://datastores/workspaceblobstore/paths/LocalUpload/[0-9a-f]+/{split}\.jsonl",
            details[key]["uri"],
        )
    # The config's values (Phi-4-mini-instruct has no model_specific_defaults), as strings.
    assert details["hyperParameters"] == {
        "num_train_epochs": "3",
        "per_device_train_batch_size": "1",
        "learning_rate": "5e-06",
    }
    submit = az.outputs("submit")
    job_name = submit["job_name"]
    assert put.path.endswith(f"/jobs/{job_name}") and submit["route"] == "job"
    output_name = f"Phi-4-mini-instruct-ultrachat-200k-{job_name}"
    assert props["outputs"] == {
        "registered_model": {"assetName": output_name, "jobOutputType": "mlflow_model"}
    }
    assert submit["output_model_name"] == output_name

    # register: the model the job registered, recorded; nothing created.
    assert not service.find("PUT", r"/models/")
    registered = az.outputs("register")
    assert registered["model_name"] == output_name and registered["version"] == "1"
    assert registered["id"] == f"{WS_ID}/models/{output_name}/versions/1"

    # deploy: a serverless endpoint of that model, by its location-scoped id; no online endpoint.
    deployed = az.outputs("deploy")
    name = deployed["endpoint_name"]
    assert deployed["endpoint_kind"] == "serverless" and re.fullmatch(r"ultrachat-phi4-\d{10}", name)
    assert not service.find("PUT", r"/onlineEndpoints/")
    [created] = [r for r in service.find("PUT", SERVERLESS)]
    assert created.body["properties"]["modelSettings"] == {
        "modelId": f"azureml://locations/{LOCATION}/workspaces/{WORKSPACE_ID}/models/{output_name}/versions/1"
    }
    assert created.body["sku"] == {"name": "Consumption"}
    assert deployed["scoring_uri"] == f"https://{name}.{LOCATION}.models.ai.azure.com"
    assert deployed["expires_at"]  # the cost guard (deploy.ttl 8h in the config)

    # score: the sample conversation on the chat completions route, with the key from listKeys.
    [scored] = _chat_calls(service)
    assert scored.path == "/v1/chat/completions" and scored.auth == "endpoint-key"
    assert scored.body["messages"][-1]["role"] == "user"
    assert scored.body["max_tokens"] == 200 and scored.body["temperature"] == 0.6
    assert az.outputs("score")["output"] == service.chat_answer
    assert service.find("POST", rf"/serverlessEndpoints/{name}/listKeys$")

    # teardown: the serverless endpoint is gone.
    assert service.find("DELETE", rf"/serverlessEndpoints/{name}$")
    assert service.serverless_endpoints == {}
    assert az.outputs("teardown")["endpoint_deleted"] is True

    # The key is never recorded or printed.
    assert ENDPOINT_KEY not in (az.workspace / "state.json").read_text()
    assert ENDPOINT_KEY not in result.stdout + result.stderr


def test_chat_and_credentials_use_the_serverless_endpoint(job_route) -> None:
    az, service = job_route, job_route.service
    az("run", "--to", "deploy")
    name = az.outputs("deploy")["endpoint_name"]
    creds = az.json("credentials")
    base = f"https://{name}.{LOCATION}.models.ai.azure.com"
    assert creds["endpoint_name"] == name
    assert creds["scoring_uri"] == f"{base}/v1/chat/completions"
    assert creds["openai_base_url"] == f"{base}/v1" and creds["primary_key"] == ENDPOINT_KEY
    assert creds["model"] == az.outputs("register")["model_uri"].removeprefix("azureml:")

    answers = iter(["Paris.", "Rome."])
    real = service._chat_completion

    def reply(r):
        service.chat_answer = next(answers)
        return real(r)

    service._chat_completion = reply
    chat = az.piped("chat", "--temperature", "0", input="Capital of France?\nAnd of Italy?\n/exit\n")
    assert [line for line in chat.stdout.splitlines() if line.startswith("assistant> ")] == [
        "assistant> Paris.",
        "assistant> Rome.",
    ]
    sent = _chat_calls(service)
    assert [r.body["messages"] for r in sent][1] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert all(r.body["temperature"] == 0.0 for r in sent)  # temperature 0: greedy


def test_metrics_and_logs_read_the_fine_tuning_job(job_route, tracking) -> None:
    """How the service lays out a fine-tuning job's runs is not public: the fake gives it the pipeline's
    steps and root-run metrics (fakes/azureml_mlflow.py), and ftctl reads them as on the pipeline route."""
    az = job_route
    az("run", "--to", "submit")
    job = az.outputs("submit")["job_name"]
    data = az.json("metrics")
    assert data["job_id"] == job and data["status"] == "FINISHED"
    assert data["params"]["learning_rate"] == "5e-06"  # the hyperparameter the job was sent
    assert data["summary"]["eval_loss"] == 1.0
    finetune = next(r for r in tracking.mlflow.runs.values() if r.run_name == "chat_completion_finetune")
    logs = az("logs")
    assert logs.stdout.splitlines() == tracking.mlflow.step_log(finetune)
    assert f"job {job}: Completed" in logs.stderr


@pytest.mark.parametrize("where", ["before-put", "after-put"])
def test_an_interrupted_fine_tuning_submit_never_starts_a_second_job(job_route, where: str) -> None:
    az, service = job_route, job_route.service
    az("run", "--to", "prepare-data")
    service.interrupt("PUT", JOB_PUT, after=where == "after-put")
    az("submit", code=130)
    name = az.state()["stages"]["submit"]["outputs"]["job_name"]
    assert name
    resumed = az("run")
    if where == "before-put":
        assert f"job {name} was recorded but never reached Azure ML; submitting it now" in resumed.stderr
    else:
        assert f"re-attaching to fine-tuning job {name}" in resumed.stderr
    assert list(service.jobs) == [name]
    assert len([r for r in service.find("PUT", JOB_PUT) if r.status < 300]) == 1
    assert service.serverless_endpoints == {}  # torn down at the end of the run


def test_an_interrupted_deploy_leaves_no_forgotten_endpoint(job_route) -> None:
    az, service = job_route, job_route.service
    az("run", "--to", "register")
    service.interrupt("PUT", SERVERLESS, after=True)
    az("deploy", code=130)
    name = az.outputs("deploy")["endpoint_name"]
    assert name in service.serverless_endpoints  # created; the reply never arrived
    resumed = az("deploy")
    assert f"serverless endpoint {name} exists" in resumed.stderr
    assert len(service.find("PUT", SERVERLESS)) == 1 and list(service.serverless_endpoints) == [name]
    az("teardown")
    assert service.serverless_endpoints == {}


def test_the_job_route_on_a_cluster_sends_its_compute(job_route) -> None:
    az, service = job_route, job_route.service
    az.settings.append("compute.name=gpu-cluster-a100")
    az("run", "--to", "submit")
    props = service.one("PUT", JOB_PUT).body["properties"]
    assert props["computeId"] == "gpu-cluster-a100"  # as azure-ai-ml sends it
    assert service.one("PUT", r"/computes/gpu-cluster-a100$")


def test_auto_picks_the_route_the_model_advertises(az) -> None:
    az.service.add_phi_family()
    az("--set", "model.name=Phi-4-mini-instruct", "run", "--to", "pick-model")
    pick = az.outputs("pick-model")
    assert pick["route"] == "job" and pick["route_source"].startswith("auto")
    az("--set", "model.name=Phi-4", "pick-model", "--force")
    assert az.outputs("pick-model")["route"] == "pipeline"


def test_serverless_compute_on_the_pipeline_route_is_refused(az) -> None:
    result = az("--set", "compute.name=serverless", "run", "--to", "check-compute", code=2)
    assert "compute.name: serverless runs only on the fine-tuning job route" in result.stderr
    assert "Traceback" not in result.stderr
    assert not az.service.find("PUT", r"/computes/")


def test_a_bad_route_names_the_key(az) -> None:
    result = az("--set", "finetune.route=lambda", "run", "--to", "pick-model", code=2)
    assert "finetune.route" in result.stderr and "Traceback" not in result.stderr
    assert az.service.requests == []


def test_finetune_route_from_metadata() -> None:
    from ftctl.backends.azureml.metadata import MAAS_REGIONS_TAG, finetune_route

    assert finetune_route({MAAS_REGIONS_TAG: "eastus2,westus3"}) == ("job", ["eastus2", "westus3"])
    assert finetune_route({MAAS_REGIONS_TAG: "['eastus2']"}) == ("job", ["eastus2"])
    assert finetune_route({}, {"maasFinetuningDeployRegions": ["eastus"]}) == ("job", ["eastus"])
    assert finetune_route({"task": "chat-completion"}) == ("pipeline", [])


def test_a_chat_completion_response_parses() -> None:
    from ftctl.scoring import parse_response

    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}]}
    assert parse_response(json.dumps(body)) == "Paris."


def test_a_scoring_request_becomes_a_chat_completion_request() -> None:
    from ftctl.backends.azureml.serverless import chat_body

    request = {
        "input_data": {
            "input_string": [[{"role": "user", "content": "hi"}]],
            "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 50},
        },
        "params": {},
    }
    assert json.loads(chat_body(json.dumps(request).encode())) == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "temperature": 0.6,
        "top_p": 0.9,
    }


def test_a_dry_run_shows_the_fine_tuning_job_and_sends_nothing(job_route) -> None:
    az, service = job_route, job_route.service
    az("run", "--to", "prepare-data")
    shown = az("submit", "--dry-run")
    assert "# fine-tuning job that submit would create" in shown.stdout
    assert "Phi-4-mini-instruct" in shown.stdout and "validation_data" in shown.stdout
    assert not service.find("PUT", JOB_PUT)
    uploads = [r for r in service.requests if r.method == "PUT" and r.host.endswith(".blob.core.windows.net")]
    assert uploads == []


def test_an_offline_dry_run_on_the_job_route_describes_it(job_route) -> None:
    az = job_route
    shown = az("run", "--dry-run")
    assert "create_finetuning_job(model=<Phi-4-mini-instruct's registry id>" in shown.stdout
    assert "serverless_endpoints.begin_create_or_update(ServerlessEndpoint(" in shown.stdout
    assert "chat_completion_pipeline" not in shown.stdout
    assert az.service.requests == []
