"""Faults: throttling and outages, interrupted submits, failed jobs, clusters and deployments."""

from __future__ import annotations

import pytest

JOB_PUT = r"/workspaces/[^/]+/jobs/[^/]+$"
JOB = r"/workspaces/[^/]+/jobs/"


def test_429_and_503_are_retried(az) -> None:
    service = az.service
    service.fail("GET", r"/registries/azureml/models/[^/]+/versions/8$", 429, headers={"Retry-After": "0"})
    service.fail("GET", r"/computes/gpu-cluster-big$", 503)
    service.fail("PUT", JOB_PUT, 503, times=2)
    az("run", "--to", "submit")
    assert az.state()["stages"]["submit"]["status"] == "succeeded"
    assert [f.hits for f in service.faults] == [1, 1, 2]
    assert [r.status for r in service.find("PUT", JOB_PUT)] == [503, 503, 201]
    assert len(service.jobs) == 1


def test_a_persistent_outage_ends_the_stage_with_the_command_to_rerun(az) -> None:
    az("run", "--to", "auth")
    az.service.fail("GET", r"/registries/azureml/models/", 503, times=None)
    result = az("pick-model", code=1)
    assert "error: getting model Phi-4 (label latest) from registry 'azureml' failed: HTTP 503" in (
        result.stderr
    )
    assert "re-run it with `ftctl pick-model`" in result.stderr
    assert "Traceback" not in result.stderr
    # azure-core's retry policy: the request, then 3 retries on a retryable status (back-off between).
    assert len(az.service.find("GET", r"/registries/azureml/models/")) == 4
    assert az.service.sleeps == [1.6, 3.2]  # exponential back-off, recorded by the fake transport
    record = az.state()["stages"]["pick-model"]
    assert record["status"] == "failed" and record["error"]["type"] == "StageFailed"


@pytest.mark.parametrize("where", ["before-put", "after-put", "following"])
def test_an_interrupted_submit_never_submits_a_second_job(az, where: str) -> None:
    service = az.service
    az("run", "--to", "prepare-data")
    if where == "before-put":
        service.interrupt("PUT", JOB_PUT)  # killed after the name was recorded, before Azure heard of it
    elif where == "after-put":
        service.interrupt("PUT", JOB_PUT, after=True)  # Azure created it, the reply never arrived
    else:
        service.interrupt("GET", JOB)  # killed while following the job
    interrupted = az("submit", code=130)
    assert "interrupted" in interrupted.stderr
    record = az.state()["stages"]["submit"]
    assert record["status"] == "running" and record["outputs"]["job_name"]
    name = record["outputs"]["job_name"]

    resumed = az("run")
    if where == "before-put":
        assert f"job {name} was recorded but never reached Azure ML; submitting it now" in resumed.stderr
    else:
        assert f"re-attaching to job {name}" in resumed.stderr
    assert list(service.jobs) == [name]
    assert len([r for r in service.find("PUT", JOB_PUT) if r.status < 300]) == 1
    assert az.state()["stages"]["teardown"]["status"] == "succeeded"


def test_no_wait_returns_once_the_job_is_recorded_and_submit_reattaches(az) -> None:
    az("run", "--to", "prepare-data")
    detached = az("submit", "--no-wait")
    name = az.outputs("submit")["job_name"]
    assert f"job {name} is running on Azure ML" in detached.stderr
    assert az.state()["stages"]["submit"]["status"] == "running"
    assert az.service.job_polls[name] == 0
    followed = az("submit")
    assert f"re-attaching to job {name}" in followed.stderr
    assert f"job {name}: Completed" in followed.stderr
    assert len(az.service.find("PUT", JOB_PUT)) == 1


def test_a_failed_job_fails_submit_with_the_studio_link(az) -> None:
    az.service.job_states = ["NotStarted", "Queued", "Running", "Failed"]
    az("run", "--to", "prepare-data")
    result = az("submit", code=1)
    assert "failed at step chat_completion_finetune" in result.stderr  # tests/azureml/test_azureml_logs.py
    assert "https://ml.azure.com/runs/" in result.stderr
    assert "re-run it with `ftctl submit`" in result.stderr
    assert az.state()["stages"]["submit"]["status"] == "failed"


def test_a_cluster_whose_provisioning_failed_is_an_error(az) -> None:
    az.service.add_compute("gpu-cluster-big", "Standard_NC24ads_A100_v4", state="Failed")
    az("run", "--to", "pick-model")
    result = az("check-compute", code=1)
    assert "compute cluster gpu-cluster-big is in provisioning state Failed" in result.stderr
    assert az.service.find("PUT", r"/computes/") == []


def test_creating_a_cluster_that_fails_is_an_error(az) -> None:
    az.service.compute_final_state = "Failed"
    az("run", "--to", "pick-model")
    result = az("check-compute", code=1)
    assert "provisioning state Failed: QuotaExceeded" in result.stderr
    assert "ftctl teardown --compute" in result.stderr


def test_a_failed_deployment_fails_deploy_with_the_logs_command(az) -> None:
    az.service.deployment_final_state = "Failed"
    az("run", "--to", "register")
    result = az("deploy", code=1)
    name = az.outputs("deploy")["endpoint_name"]
    assert "az ml online-deployment get-logs" in result.stderr and name in result.stderr
    assert "Traceback" not in result.stderr


def test_an_endpoint_deleted_behind_ftctls_back_is_redeployed_before_scoring(az) -> None:
    az("run", "--to", "deploy")
    first = az.outputs("deploy")["endpoint_name"]
    az.service.endpoints.clear()
    result = az("score", code=2)
    assert "`ftctl deploy`" in result.stderr
    assert first  # the state still names it; deploy creates it again
    az("deploy", "--force")
    az("score")


def test_an_interrupted_deploy_reuses_its_endpoint(az) -> None:
    az("run", "--to", "register")
    az.service.interrupt("PUT", r"/deployments/demo$")
    interrupted = az("deploy", code=130)
    assert "keeps running in the background" in interrupted.stderr
    name = az.outputs("deploy")["endpoint_name"]
    resumed = az("deploy")
    assert f"endpoint {name} exists" in resumed.stderr
    assert list(az.service.endpoints) == [name]
    assert len(az.service.find("PUT", r"/onlineEndpoints/[^/]+$")) == 2  # created once, then the traffic
    assert az.outputs("deploy")["traffic"] == {"demo": 100}
