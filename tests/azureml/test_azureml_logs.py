"""`ftctl logs` on Azure ML and a failed pipeline's error, against the fake service: the steps from run
history, a step's user log through its run details (logFiles) and the SAS URL of the log blob."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from fakes.azureml_mlflow import FINETUNE, STEPS
from ftctl.backends.azureml.steps import error_line, user_log_file

DETAILS = r"/history/v1\.0/.*/runs/[^/]+/details$"
USER_LOG = r"/azureml/ExperimentRun/dcid\.[^/]+/user_logs/std_log(_process_0)?\.txt$"


def _run(service, step: str):
    return next(run for run in service.mlflow.runs.values() if run.run_name == step)


def test_logs_shows_the_finetune_steps_user_log(az) -> None:
    az("run", "--to", "submit")
    service = az.service
    before = len(service.mutations)
    result = az("logs")
    expected = service.mlflow.step_log(_run(service, FINETUNE))
    assert result.stdout.splitlines() == expected
    assert any(line.startswith("{'loss': ") for line in expected)
    job = az.outputs("submit")["job_name"]
    assert (
        f"job {job}: Completed; step {FINETUNE}: Completed; {len(expected)} lines from "
        "user_logs/std_log_process_0.txt" in result.stderr
    )
    # The step's run details, then the log blob by its SAS URL: no bearer token goes to storage.
    details = service.find("GET", DETAILS)[-1]
    assert details.host == "eastus2.api.azureml.ms" and details.auth == "Bearer fake-token"
    blob = service.find("GET", USER_LOG)[-1]
    assert blob.host == "stftctltest.blob.core.windows.net"
    assert blob.auth is None and blob.query["sp"] == "r" and blob.query["sig"]
    assert service.find("GET", r"/system_logs/") == []  # only the user log is downloaded
    assert len(service.mutations) == before  # reading logs changes nothing
    assert service.unhandled == []


def test_logs_json_and_another_step(az) -> None:
    az("run", "--to", "submit")
    data = az.json("logs", "--step", "chat_completion_datapreprocess")
    assert set(data) == {
        "backend",
        "job",
        "job_status",
        "step",
        "step_status",
        "steps",
        "source",
        "lines",
    }
    assert data["backend"] == "azureml" and data["step"] == "chat_completion_datapreprocess"
    assert data["job"] == az.outputs("submit")["job_name"] and data["job_status"] == "Completed"
    assert data["steps"] == [{"name": step, "status": "Completed"} for step in STEPS]
    assert data["source"] == "user_logs/std_log.txt" and data["step_status"] == "Completed"
    assert "Preprocessing done" in data["lines"]


def test_an_unknown_step_is_a_usage_error_listing_the_steps(az) -> None:
    az("run", "--to", "submit")
    result = az("logs", "--step", "finetune", code=2)
    assert "has no step finetune; its steps: ft_nlp_common_validation (Completed)" in result.stderr
    assert f"{FINETUNE} (Completed)" in result.stderr
    data = json.loads(az("--json", "logs", "--step", "nope", code=2).stdout)
    assert data["error"]["type"] == "UsageError"


def test_logs_before_submit_says_what_to_run(az) -> None:
    az("run", "--to", "prepare-data")
    result = az("logs", code=2)
    assert "no fine-tuning job to show: submit has not run" in result.stderr
    assert "`ftctl submit`" in result.stderr


def test_follow_polls_the_running_step_until_it_ends(az) -> None:
    """--follow on a job still running: the first half of the fine-tuning log, then the rest, each line
    once, re-reading the step's details while it runs."""
    service = az.service
    service.job_states = ["NotStarted", "Queued", "Running", "Running", "Running", "Running", "Completed"]
    az("run", "--to", "prepare-data")
    az("submit", "--no-wait")
    shown: list[int] = []  # how many lines the step's log had at each read of its details
    real = service.mlflow.step_log

    def step_log(run):
        lines = real(run)
        if run.run_name == FINETUNE:
            shown.append(len(lines))
        return lines

    service.mlflow.step_log = step_log
    result = az("logs", "--follow")
    expected = real(_run(service, FINETUNE))
    assert result.stdout.splitlines() == expected
    assert shown[0] < shown[-1] == len(expected) and len(shown) >= 2
    assert f"step {FINETUNE}: Completed" in result.stderr
    assert service.unhandled == []


def test_a_running_job_that_has_not_reached_the_step(az) -> None:
    service = az.service
    service.job_states = ["NotStarted", "Queued", "Running"]
    az("run", "--to", "prepare-data")
    az("submit", "--no-wait")
    az("logs")  # Running: the fine-tuning step runs
    result = az("logs", "--step", "ft_nlp_model_converter", code=2)
    assert "is Running and has no step ft_nlp_model_converter yet" in result.stderr
    assert "`ftctl logs --follow` waits for it" in result.stderr


def test_follow_stops_cleanly_on_ctrl_c(az, monkeypatch) -> None:
    service = az.service
    service.job_states = ["NotStarted", "Queued", "Running"]  # runs for ever
    az("run", "--to", "prepare-data")
    az("submit", "--no-wait")
    import time

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupt)
    result = az("logs", "--follow", code=130)
    assert result.stdout.splitlines() == service.mlflow.step_log(_run(service, FINETUNE))
    assert "the job keeps running" in result.stderr and "Traceback" not in result.stderr


def test_a_failed_pipeline_names_the_step_and_its_error(az) -> None:
    service = az.service
    service.job_states = ["NotStarted", "Queued", "Running", "Failed"]
    az("run", "--to", "prepare-data")
    result = az("submit", code=1)
    job = az.outputs("submit")["job_name"]
    assert (
        f"error: pipeline job {job} failed at step {FINETUNE}: azureml._common.exceptions.AzureMLException: "
        "AzureMLException: There is not enough GPU memory on the machine" in result.stderr
    )
    assert f"hint: the step's whole log: `ftctl logs --step {FINETUNE}`" in result.stderr
    assert f"https://ml.azure.com/runs/{job}" in result.stderr
    assert az.state()["stages"]["submit"]["status"] == "failed"
    # The step's log, traceback included; the steps after it never ran.
    logs = az("logs")
    assert "[rank0]: torch.OutOfMemoryError: CUDA out of memory." in logs.stdout
    assert logs.stdout.splitlines()[-1].startswith("[rank0]: \tErrorResponse")
    assert f"step {FINETUNE}: Failed" in logs.stderr
    later = az("logs", "--step", "ft_nlp_model_converter", code=2)
    assert f"{FINETUNE} (Failed)" in later.stderr
    assert f"`ftctl logs --step {FINETUNE}`" in later.stderr
    assert service.unhandled == []


def test_a_pipeline_that_failed_before_fine_tuning(az) -> None:
    service = az.service
    service.job_states = ["NotStarted", "Queued", "Running", "Failed"]
    service.mlflow.failed_step = "chat_completion_datapreprocess"
    service.mlflow.failure_log = [
        "Traceback (most recent call last):",
        '  File "preprocess.py", line 88, in <module>',
        "azureml.acft.common_components.utils.error_handling.exceptions.ACFTValidationException: "
        "Number of training rows after filtering is 3, need at least 10",
    ]
    az("run", "--to", "prepare-data")
    result = az("submit", code=1)
    assert "failed at step chat_completion_datapreprocess: azureml.acft" in result.stderr
    assert "need at least 10" in result.stderr
    missing = az("logs", code=2)  # the default step never ran
    assert f"has no step {FINETUNE}" in missing.stderr
    assert "`ftctl logs --step chat_completion_datapreprocess`" in missing.stderr


def test_a_failed_step_whose_log_names_no_error_gets_run_historys_message(az) -> None:
    service = az.service
    service.job_states = ["NotStarted", "Queued", "Running", "Failed"]
    service.mlflow.failure_log = ["Killed"]
    az("run", "--to", "prepare-data")
    result = az("submit", code=1)
    assert f"failed at step {FINETUNE}: Execution failed. User process" in result.stderr


def test_a_canceled_job_keeps_the_plain_message(az) -> None:
    az.service.job_states = ["NotStarted", "Queued", "Running", "Canceled"]
    az("run", "--to", "prepare-data")
    result = az("submit", code=1)
    assert "ended Canceled" in result.stderr


def test_error_line() -> None:
    traceback = [
        "loading the model",
        "[rank0]: Traceback (most recent call last):",
        '[rank0]:   File "train.py", line 3, in <module>',
        "[rank0]:     main()",
        "[rank0]: RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error",
        "W1201 torch/distributed/elastic: Sending process 1234 closing signal SIGTERM",
    ]
    assert error_line("\n".join(traceback)) == (
        "RuntimeError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled cuda error"
    )
    chained = "Traceback (most recent call last):\n  x\nKeyError: 'a'\n\nTraceback (most recent call last):\n"
    assert error_line(chained + "  y\nValueError: bad\n") == "ValueError: bad"
    assert error_line("step 1\nConnectionError while fetching\nstep 2\nError again\n") == (
        "ConnectionError while fetching"
    )
    assert error_line("all good\n") is None
    assert error_line("\x1b[31mOSError: disk full\x1b[0m") == "OSError: disk full"
    assert len(error_line("ValueError: " + "x" * 1000) or "") == 400


def test_user_log_file_prefers_std_log_then_rank_zero() -> None:
    files = {"system_logs/lifecycler/lifecycler.log": "s", "user_logs/std_log.txt": "u"}
    assert user_log_file(files) == ("user_logs/std_log.txt", "u")
    ranks = {"user_logs/std_log_process_1.txt": "1", "user_logs/std_log_process_0.txt": "0"}
    assert user_log_file(ranks) == ("user_logs/std_log_process_0.txt", "0")
    assert user_log_file({"system_logs/x.log": "s"}) is None and user_log_file(None) is None
