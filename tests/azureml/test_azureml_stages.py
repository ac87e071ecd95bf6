"""--dry-run, teardown (--compute), scoring response shapes, and the refusals that keep local-only options
off the local backend."""

from __future__ import annotations

import json

import yaml


def _state_bytes(az) -> bytes:
    return (az.workspace / "state.json").read_bytes()


def test_dry_run_prints_the_entities_and_sends_and_records_nothing(az) -> None:
    service = az.service
    az("run", "--to", "pick-model")
    before, mutations = _state_bytes(az), len(service.mutations)
    compute = az("check-compute", "--dry-run")
    assert "# compute cluster gpu-cluster-big does not exist; check-compute would create" in compute.stdout
    entity = yaml.safe_load(compute.stdout.split("\n", 1)[1])
    assert entity["type"] == "amlcompute" and entity["size"] == "Standard_NC24ads_A100_v4"
    assert entity["min_instances"] == 0 and entity["max_instances"] == 1
    assert entity["idle_time_before_scale_down"] == 120
    assert _state_bytes(az) == before and len(service.mutations) == mutations

    az("run", "--to", "prepare-data")
    before, requests = _state_bytes(az), len(service.requests)
    submit = az("submit", "--dry-run")
    job = yaml.safe_load(submit.stdout.split("\n", 1)[1])
    assert job["type"] == "pipeline"
    assert job["settings"]["force_rerun"] is True and job["settings"]["continue_on_step_failure"] is False
    node = job["jobs"]["chat_completion_pipeline"]
    assert (
        node["component"]
        == "azureml://registries/azureml/components/chat_completion_pipeline/versions/0.0.82"
    )
    assert node["inputs"]["apply_lora"] == "true" and node["inputs"]["compute_finetune"] == "gpu-cluster-big"
    assert node["inputs"]["train_file_path"]["type"] == "uri_file"
    assert _state_bytes(az) == before
    new = service.requests[requests:]
    assert all(r.method == "GET" for r in new), new  # reads only: no upload, no job
    assert service.jobs == {}

    az("run")
    before, mutations = _state_bytes(az), len(service.mutations)
    register = az("register", "--dry-run")
    model = yaml.safe_load(register.stdout.split("\n", 1)[1])
    assert model["type"] == "mlflow_model" and model["path"].startswith("azureml://jobs/")
    deploy = az("deploy", "--dry-run")
    documents = deploy.stdout.split("# ")
    endpoint = yaml.safe_load(documents[1].split("\n", 1)[1])
    deployment = yaml.safe_load(documents[2].split("\n", 1)[1])
    assert endpoint["auth_mode"] == "key"
    assert deployment["name"] == "demo" and deployment["instance_type"] == "Standard_NC24ads_A100_v4"
    assert deployment["liveness_probe"]["initial_delay"] == 600
    assert deployment["request_settings"]["request_timeout_ms"] == 90000
    assert "traffic {'demo': 100}" in deploy.stdout
    assert _state_bytes(az) == before and len(service.mutations) == mutations


def test_dry_run_and_compute_are_azure_only(ftctl) -> None:
    assert "--dry-run is for --backend azureml" in ftctl("submit", "--dry-run", code=2).stderr
    assert "--compute is for --backend azureml" in ftctl("teardown", "--compute", code=2).stderr
    assert "--list lists an Azure ML registry" in ftctl("pick-model", "--list", code=2).stderr


def test_teardown_compute_deletes_only_a_cluster_ftctl_created(az) -> None:
    az("run")
    result = az("teardown", "--compute")
    assert "endpoint" in result.stderr and "does not exist (already deleted)" in result.stderr
    assert az.service.one("DELETE", r"/computes/gpu-cluster-big$")
    assert "gpu-cluster-big" not in az.service.computes
    assert az.outputs("teardown")["compute_deleted"] is True


def test_teardown_compute_leaves_a_cluster_it_found(az) -> None:
    az.service.add_compute("gpu-cluster-big", "Standard_NC24ads_A100_v4")
    az("run")
    assert az.outputs("check-compute")["created"] is False
    result = az("teardown", "--compute")
    assert "was not created by ftctl" in result.stderr
    assert az.service.find("DELETE", r"/computes/") == []
    assert "gpu-cluster-big" in az.service.computes


def test_score_accepts_every_response_shape(az) -> None:
    az("run", "--to", "deploy")
    for body in ('{"output": "Paris."}', '"Paris."', '[{"0": "Paris."}]', '[{"output": "Paris."}]'):
        az.service.score_body = body
        result = az("score")
        assert f"raw response: {body}" in result.stdout
        assert "output: Paris." in result.stdout
        assert az.outputs("score")["output"] == "Paris."


def test_score_http_error_is_a_clean_failure(az) -> None:
    az("run", "--to", "deploy")
    az.service.score_status, az.service.score_body = 424, json.dumps({"message": "model crashed"})
    result = az("score", code=1)
    assert "scoring endpoint" in result.stderr and "424" in result.stderr
    assert "Traceback" not in result.stderr


def test_deploy_again_deletes_the_previous_endpoint_first(az) -> None:
    az("run", "--to", "deploy")
    first = az.outputs("deploy")["endpoint_name"]
    assert first in az.service.endpoints
    result = az("--set", "deploy.endpoint_name_prefix=ultrachat-again-", "deploy", "--force")
    second = az.outputs("deploy")["endpoint_name"]
    assert second != first
    assert f"deleting the previous endpoint {first}" in result.stderr
    assert list(az.service.endpoints) == [second]


def test_check_compute_refuses_a_cluster_the_quota_cannot_hold(az) -> None:
    az("run", "--to", "pick-model")
    az.service.quota["standardNCADSA100v4Family"] = (0, 0)  # the subscription has no A100 quota
    az.service.quota["standardNDASv4_A100Family"] = (0, 48)  # ND96asr_v4 needs 96: no
    result = az("check-compute", code=2)
    assert (
        "compute cluster gpu-cluster-big would not fit the quota: 1 node of Standard_NC24ads_A100_v4 "
        "(24 vCPUs each) need 24 dedicated vCPUs; Standard NCADSA100v4 Family Cluster Dedicated vCPUs: "
        "0 of 0 free (0 in use); Total Cluster Dedicated Regional vCPUs: 200 of 200 free (0 in use)"
    ) in result.stderr
    assert "allowed sizes that would fit: none" not in result.stderr
    assert "none of the allowed sizes fits; request more quota" in result.stderr
    assert az.service.find("PUT", r"/computes/") == []
    # The model's allow-list has sizes that fit once they have quota: they are named, with the --set.
    az.service.quota["standardNDASv4_A100Family"] = (0, 192)
    result = az("check-compute", code=2)
    assert (
        "allowed sizes that would fit: Standard_ND96asr_v4 (8 GPU, 96 vCPUs; 192 vCPUs free)" in result.stderr
    )
    assert "--set compute.size=Standard_ND96asr_v4" in result.stderr
    az("--set", "compute.size=Standard_ND96asr_v4", "check-compute")
    assert az.outputs("check-compute")["quota"]["fits"] is True
    assert az.service.one("PUT", r"/computes/gpu-cluster-big$").body["properties"]["properties"][
        "vmSize"
    ] == ("Standard_ND96asr_v4")


def test_check_compute_quota_used_elsewhere_and_scaling_warning(az) -> None:
    az("run", "--to", "pick-model")
    az.service.quota["standardNCADSA100v4Family"] = (80, 96)  # 16 free: one 24-vCPU node does not fit
    result = az("check-compute", code=2)
    assert "need 24 dedicated vCPUs; Standard NCADSA100v4 Family Cluster Dedicated vCPUs: 16 of 96 free" in (
        result.stderr
    )
    az.service.quota["standardNCADSA100v4Family"] = (48, 96)  # 48 free: 1 node fits, 3 would not
    result = az("--set", "compute.max_instances=3", "check-compute")
    assert "warning: the cluster may scale to 3 nodes (72 vCPUs)" in result.stderr
    # Without the permission to read usages, the check is skipped with a warning, not a failure.
    az.service.computes.clear()
    az.service.fail("GET", r"/usages$", 403, times=None)
    result = az("check-compute", "--force")
    assert "quota not checked" in result.stderr
