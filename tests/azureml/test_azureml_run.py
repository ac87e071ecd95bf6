"""`ftctl run --backend azureml --config configs/azureml-phi4-ultrachat.yaml` against the fake Azure ML
service, and the requests it sends compared with the notebook's calls."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from fakes.azureml import (
    COMPONENT_INPUTS,
    ENDPOINT_KEY,
    FAKE_SIGNATURE,
    REGISTRY_MFE,
    WS_ID,
)
from ftctl.pipeline import ORDER

JOB_PUT = r"/workspaces/[^/]+/jobs/[^/]+$"
YES_NO = {name for name, (kind, extra) in COMPONENT_INPUTS.items() if extra.get("enum") == ["true", "false"]}


def test_run_completes_all_nine_stages_with_the_notebooks_calls(az) -> None:
    result = az("run")
    state = az.state()
    assert [state["stages"][name]["status"] for name in ORDER] == ["succeeded"] * 9
    service = az.service
    assert service.unhandled == []
    hosts = {r.host for r in service.requests}
    assert all(
        # ARM; the registry's discovery (eastus) and data plane; the workspace region's services (eastus2:
        # discovery and run history, where submit follows the pipeline's steps)
        h in ("management.azure.com", "eastus.api.azureml.ms", "eastus2.api.azureml.ms", REGISTRY_MFE[8:-1])
        or h.endswith((".blob.core.windows.net", ".inference.ml.azure.com"))
        for h in hosts
    ), hosts
    # Every ARM / registry call carries the (fake) AAD token; the scoring call the endpoint key.
    assert {r.auth for r in service.requests if r.host == "management.azure.com"} == {"Bearer fake-token"}

    # check-compute: the cluster did not exist, so an AmlCompute was created from the compute section.
    compute = service.one("PUT", r"/computes/gpu-cluster-big$").body["properties"]
    assert compute["computeType"] == "AmlCompute"
    assert compute["properties"]["vmSize"] == "Standard_NC24ads_A100_v4"
    assert compute["properties"]["scaleSettings"] == {
        "maxNodeCount": 1,
        "minNodeCount": 0,
        "nodeIdleTimeBeforeScaleDown": "PT2M",
    }
    assert az.outputs("check-compute")["gpus_per_node"] == 1
    assert az.outputs("check-compute")["created"] is True

    # submit: the pipeline job around the registry component.
    job = service.one("PUT", JOB_PUT).body["properties"]
    assert job["jobType"] == "Pipeline"
    assert job["experimentName"] == "chat_completion_Phi-4"
    assert job["displayName"] == "Phi-4-ultrachat-bs1-cosine-ds3-lora-save_limit1-seqlen4096"
    assert job["settings"]["force_rerun"] is True
    assert job["settings"]["continue_on_step_failure"] is False
    assert job["outputs"] == {"trained_model": {"jobOutputType": "mlflow_model"}}
    [(node_name, node)] = job["jobs"].items()
    assert node_name == "chat_completion_pipeline"
    assert (
        node["componentId"]
        == "azureml://registries/azureml/components/chat_completion_pipeline/versions/0.0.82"
    )
    assert node["outputs"]["mlflow_model_folder"]["value"] == "${{parent.outputs.trained_model}}"
    inputs = node["inputs"]
    assert set(inputs) <= set(COMPONENT_INPUTS), set(inputs) - set(COMPONENT_INPUTS)
    literal = {k: v["value"] for k, v in inputs.items() if v["job_input_type"] == "literal"}
    assert inputs["mlflow_model_path"] == {
        "uri": "azureml://registries/azureml/models/Phi-4/versions/8",
        "job_input_type": "mlflow_model",
    }
    for split in ("train_file_path", "test_file_path"):
        assert inputs[split]["job_input_type"] == "uri_file"
        assert re.fullmatch(
            r"azureml://datastores/workspaceblobstore/paths/LocalUpload/[0-9a-f]+/(train|test)_sft\.jsonl",
            inputs[split]["uri"],
        )
    for name in (
        "compute_model_import",
        "compute_preprocess",
        "compute_finetune",
        "compute_model_evaluation",
    ):
        assert literal[name] == "gpu-cluster-big"
    assert literal["number_of_gpu_to_use_finetuning"] == "1"
    # The notebook's parameters, the model's defaults over them, yes/no inputs as "true"/"false" strings.
    assert literal["apply_lora"] == "true"
    assert literal["apply_deepspeed"] == "true"
    assert literal["deepspeed_stage"] == "3"  # Phi-4's model_specific_defaults: DeepSpeed stage 3
    assert literal["precision"] == "16"
    assert literal["lr_scheduler_type"] == "cosine"
    assert float(literal["learning_rate"]) == 5e-6
    assert (
        literal["num_train_epochs"] == "1"
    )  # the model default wins over the config's 3, as in the notebook
    assert literal["save_total_limit"] == "1"
    assert literal["max_seq_length"] == "4096"
    assert all(literal[name] in ("true", "false") for name in YES_NO & set(literal))
    assert "learning_rate_min" not in inputs and "learning_rate_max" not in inputs
    # Phi-4's model_specific_defaults (azureml-assets) are all component inputs: nothing is dropped.
    assert "not sent to chat_completion_pipeline" not in result.stderr
    # The data files went to the workspace's blob store, once each.
    uploads = [
        r.path.rsplit("/", 1)[1]
        for r in service.requests
        if r.method == "PUT" and r.host.endswith(".blob.core.windows.net") and "comp" not in r.query
    ]
    assert sorted(uploads) == ["test_sft.jsonl", "train_sft.jsonl"]

    # register: an MLflow model from the job's output.
    job_name = az.outputs("submit")["job_name"]
    model_put = service.one("PUT", r"/models/Phi-4-ultrachat-200k/versions/\d+$")
    assert model_put.body["properties"]["modelUri"] == f"azureml://jobs/{job_name}/outputs/trained_model"
    assert model_put.body["properties"]["modelType"] == "mlflow_model"
    assert model_put.body["properties"]["tags"]["ftctl.job_id"] == job_name

    # deploy: key-auth endpoint, deployment "demo" with the probe and timeout, then all traffic.
    endpoint_name = az.outputs("deploy")["endpoint_name"]
    assert re.fullmatch(r"ultrachat-phi4-\d{10}", endpoint_name)
    endpoint_puts = service.find("PUT", rf"/onlineEndpoints/{endpoint_name}$")
    assert [p.body["properties"]["authMode"] for p in endpoint_puts] == ["Key", "Key"]
    assert [p.body["properties"]["traffic"] for p in endpoint_puts] == [{}, {"demo": 100}]
    deployment = service.one("PUT", rf"/onlineEndpoints/{endpoint_name}/deployments/demo$").body
    assert deployment["properties"]["instanceType"] == "Standard_NC24ads_A100_v4"
    assert deployment["properties"]["livenessProbe"]["initialDelay"] == "PT10M"
    assert deployment["properties"]["requestSettings"]["requestTimeout"] == "PT1M30S"
    assert (
        deployment["properties"]["model"]
        == f"{WS_ID}/models/Phi-4-ultrachat-200k/versions/" + (az.outputs("register")["version"])
    )
    assert deployment["sku"]["capacity"] == 1

    # score: listKeys, then the notebook's request with the key and the deployment header.
    score = service.one("POST", r"^/score$")
    assert score.auth == "Bearer endpoint-key"
    assert score.headers["azureml-model-deployment"] == "demo"
    sent = json.loads((az.workspace / "score" / "sample_score.json").read_text())
    assert score.body == sent
    assert sent["input_data"]["parameters"] == {
        "temperature": 0.6,
        "top_p": 0.9,
        "do_sample": True,
        "max_new_tokens": 200,
    }
    assert isinstance(sent["input_data"]["input_string"][0], list)
    assert 'raw response: {"output": "The capital of France is Paris."}' in result.stdout
    assert "output: The capital of France is Paris." in result.stdout

    # teardown: the endpoint is deleted.
    assert service.one("DELETE", rf"/onlineEndpoints/{endpoint_name}$")
    assert endpoint_name not in service.endpoints

    # No secret in the state file or the output.
    text = (az.workspace / "state.json").read_text()
    for secret in (ENDPOINT_KEY, FAKE_SIGNATURE, "fake-storage-account-key"):
        assert secret not in text and secret not in result.stdout and secret not in result.stderr


def test_second_run_is_up_to_date_and_sends_nothing_that_changes_anything(az) -> None:
    az("run")
    before = len(az.service.mutations)
    again = az("run")
    for name in ORDER:
        assert f"- {name}: up to date" in again.stderr
    assert len(az.service.mutations) == before


def test_json_output_is_clean(az) -> None:
    """Progress goes to stderr; with --json stdout holds only the JSON document (no SDK progress dots)."""
    az("run", "--to", "prepare-data")
    out = az.json("deploy", code=2)  # register has not run: a clean JSON error
    assert out["error"]["type"] == "UpstreamNotReady"
    result = az.json("check-compute", "--force")
    assert result["stage"] == "check-compute" and result["outputs"]["gpus_per_node"] == 1


def test_status_shows_azure_summaries_without_importing_azure(az) -> None:
    import subprocess
    import sys

    az("run", "--to", "check-compute")
    code = (
        "import sys\n"
        "from ftctl.cli.app import main\n"
        "sys.argv = ['ftctl', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('AZURE', sorted(m for m in sys.modules if m.split('.')[0] == 'azure'))\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--workspace",
            str(az.workspace),
            *az.args("status")[:-1],
            "status",
            "--wide",
        ],
        capture_output=True,
        text=True,
        cwd=az.root,
        check=True,
    ).stdout
    assert "AZURE []" in out, out
    assert "Phi-4 v8" in out
    assert "gpu-cluster-big Standard_NC24ads_A100_v4 x1 GPU" in out


def test_submit_follows_the_pipelines_steps(az) -> None:
    """While submit waits, each step of chat_completion_pipeline is reported when its state changes
    (run history children of the job, and of its pipeline node)."""
    az("run", "--to", "prepare-data")
    result = az("submit")
    lines = [line.split("] ", 1)[1] for line in result.stderr.splitlines() if "]   step " in line]
    assert lines[:4] == [
        "  step ft_nlp_common_validation: Completed",
        "  step chat_completion_model_import: Completed",
        "  step chat_completion_datapreprocess: Completed",
        "  step chat_completion_finetune: Running",
    ]
    assert "  step chat_completion_finetune: Completed" in lines
    assert "  step ft_nlp_model_converter: Completed" in lines
    assert lines.count("  step chat_completion_finetune: Running") == 1  # said once, not every poll
    history = az.service.find("GET", r"/history/v1\.0/.*/runs/[^/]+/children$")
    assert history and all(r.host == "eastus2.api.azureml.ms" for r in history)
    assert az.service.unhandled == []
