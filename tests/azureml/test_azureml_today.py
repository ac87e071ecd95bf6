"""Azure ML as it is today (issue 15): the fake's component inputs against the vendored 0.0.82 spec, ACFT's
re-raised failures in per-rank logs, and the fine-tuning metrics read from the root pipeline run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from fakes.azureml import COMPONENT_INPUTS
from fakes.azureml_mlflow import FAILURE_LOG, FINETUNE, STEPS
from ftctl.backends.azureml.steps import error_line

SPEC = Path(__file__).parent / "data" / "chat_completion_pipeline_0.0.82.yaml"


def _same(mine: object, real: object) -> bool:
    try:
        return float(str(mine)) == float(str(real))
    except ValueError:
        return str(mine) == str(real)


def test_the_fakes_component_inputs_match_the_vendored_0_0_82_spec() -> None:
    assert SPEC.read_text().startswith("# Vendored as data (not code) from Azure/azureml-assets")
    spec = yaml.safe_load(SPEC.read_text())
    assert spec["name"] == "chat_completion_pipeline" and spec["version"] == "0.0.82"
    real = spec["inputs"]
    assert sorted(real) == sorted(COMPONENT_INPUTS)
    for name, (kind, extra) in COMPONENT_INPUTS.items():
        declared = real[name]
        assert declared["type"] == kind, name
        if "default" in declared:
            assert _same(extra.get("default"), declared["default"]), name
        if "enum" in declared:
            assert [str(v) for v in extra.get("enum", [])] == [str(v) for v in declared["enum"]], name
        assert bool(extra.get("optional", True)) == bool(declared.get("optional", False)), name
    # The fake's steps are the spec's jobs, in order (no evaluation step since 0.0.79).
    assert list(spec["jobs"]) == STEPS
    assert sorted(spec["outputs"]) == ["mlflow_model_folder", "pytorch_model_folder"]


def test_acfts_reraised_oom_gives_its_message_on_one_line() -> None:
    text = "\n".join(["[rank0]: some progress", *FAILURE_LOG]) + "\n"
    line = error_line(text)
    assert line is not None and "\n" not in line
    assert line.startswith("azureml._common.exceptions.AzureMLException: AzureMLException: There is not")
    assert "not enough GPU memory" in line
    # A plain traceback still ends with its exception line.
    assert error_line("Traceback (most recent call last):\n  x\nValueError: bad\n") == "ValueError: bad"
    validation = [
        "Traceback (most recent call last):",
        "azureml.acft.common_components.utils.error_handling.exceptions.ACFTValidationException: "
        "ACFTValidationException:",
        "\tMessage: max_seq_length leaves no assistant token in 12 rows",
        "\tInnerException None",
    ]
    assert error_line("\n".join(validation)).endswith(
        "ACFTValidationException: max_seq_length leaves no assistant token in 12 rows"
    )


def test_a_finetune_oom_fails_submit_with_one_line_naming_gpu_memory(az) -> None:
    service = az.service
    service.job_states = ["NotStarted", "Queued", "Running", "Failed"]
    az("run", "--to", "prepare-data")
    result = az("submit", code=1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "not enough GPU memory" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    # The log read was rank 0's (the step has one std_log_process_<n>.txt per rank, no std_log.txt).
    read = [r.path for r in service.requests if r.method == "GET" and "/user_logs/" in r.path]
    assert read and all(path.endswith("/user_logs/std_log_process_0.txt") for path in read)
    logs = az("logs")
    assert f"step {FINETUNE}: Failed" in logs.stderr and "std_log_process_0.txt" in logs.stderr
    assert "[rank0]: \tMessage: There is not enough GPU memory" in logs.stdout


def test_metrics_from_the_root_pipeline_run_when_the_steps_cannot_be_found(az, tracking) -> None:
    """The finetune step also logs its metrics at the root pipeline run; when MLflow search does not reach
    the nested steps (their layout is not public), `ftctl metrics` reads the root run's."""
    tracking.mlflow.nested_steps_searchable = False
    az("run", "--to", "submit")
    job = az.outputs("submit")["job_name"]
    data = az.json("metrics")
    assert data["run_id"] == job and data["job_id"] == job
    steps = {row["step"]: row for row in data["steps"]}
    assert [steps[s]["train_loss"] for s in (5, 10, 15, 20)] == [1.45, 1.3, 1.15, 1.0]
    # The named step wins when it can be found (the same numbers, its own run).
    tracking.mlflow.nested_steps_searchable = True
    named = az.json("metrics")
    assert named["run_name"].endswith(" / chat_completion_finetune") and named["steps"] == data["steps"]
