"""The promotion gate in `ftctl register` and `ftctl evaluate` on Azure ML, against the fake service: the
fine-tuned model's held-out loss is the job's last eval_loss (its chat_completion_finetune MLflow run),
the base model's the job's eval_loss at step 0, the previous version's its `ftctl.eval.loss` tag when
its `ftctl.eval.setup` tag matches."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

NAME = "Phi-4-ultrachat-200k"
REFUSED = "register refused by the gate (register.gate: improve): the fine-tuned model is"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """register names a version by the time in seconds: distinct ones for registrations a test makes
    within the same second."""
    from ftctl.backends.azureml.stages import register

    seconds = itertools.count(1_800_000_000)
    monkeypatch.setattr(register, "time", SimpleNamespace(time=lambda: next(seconds)))


def _versions(service: Any) -> dict[str, dict[str, str]]:
    """version -> tags of the model's versions in the fake workspace, as stored from the PUT."""
    return {
        version: body["properties"].get("tags") or {}
        for version, body in service.models.get(NAME, {}).items()
    }


def _mlflow_requests(service: Any, since: int = 0) -> list[Any]:
    return [r for r in service.requests[since:] if "/mlflow/" in r.path]


def _first_version(az: Any) -> str:
    """A first job whose evaluation before training gives the base model's loss (1.6; its final 1.0),
    registered past the gate."""
    az.service.mlflow.start_eval_loss = 1.6
    az("run", "--to", "register")
    return str(az.outputs("register")["version"])


def _second_job(az: Any, final_eval_loss: float) -> None:
    """Another job of the same model on the same data, ending with `final_eval_loss`."""
    az.service.mlflow.final_eval_loss = final_eval_loss
    az("submit", "--force")


def test_the_first_version_passes_on_the_jobs_own_eval_losses_and_carries_them(az, tracking) -> None:
    az.service.mlflow.start_eval_loss = 1.6
    result = az("run", "--to", "register")
    assert "gate (improve): passed: held-out loss fine-tuned 1.0000, base 1.6000" in result.stderr
    assert "not compared" not in result.stderr  # there is no earlier version to leave out
    version = str(az.outputs("register")["version"])
    out = az.outputs("register")
    assert out["gate"] == {
        "policy": "improve",
        "result": "passed",
        "reasons": [],
        "fine_tuned": 1.0,
        "base": 1.6,
        "previous": None,
        "previous_version": None,
    }
    tags = _versions(az.service)[version]  # what the workspace holds, as the SDK sent it
    assert tags["ftctl.gate"] == "improve" and tags["ftctl.gate.result"] == "passed"
    assert float(tags["ftctl.eval.loss"]) == 1.0 and float(tags["ftctl.eval.base_loss"]) == 1.6
    assert tags["ftctl.eval.setup"] and "ftctl.eval.previous_loss" not in tags
    assert tags["ftctl.job_id"] == az.outputs("submit")["job_name"]  # the lineage tags stay
    assert out["tags"] == tags
    # Read through the real mlflow client: the fine-tuning step's eval_loss history.
    finetune = next(r for r in tracking.mlflow.runs.values() if r.run_name == "chat_completion_finetune")
    history = [r for r in _mlflow_requests(tracking) if r.path.endswith("/metrics/get-history")]
    read = {(r.query["run_id"], r.query["metric_key"]) for r in history}
    # eval_loss for the gate; train_runtime is submit's (the job's pace, for later plans).
    assert read == {(finetune.run_id, "eval_loss"), (finetune.run_id, "train_runtime")}
    assert "(forced past the gate)" not in az("status", "--wide").stdout


def test_with_nothing_to_compare_with_the_gate_skips_and_registers(az, tracking) -> None:
    az("run", "--to", "submit")  # no evaluation before training, no earlier version
    result = az("register")
    assert (
        "gate (improve): skipped: held-out loss fine-tuned 1.0000, base n/a (nothing to compare with: "
        "the job logged no eval_loss at step 0 (no evaluation before training), and no earlier version "
        f"of {NAME})"
    ) in result.stderr
    [tags] = _versions(az.service).values()
    assert tags["ftctl.gate.result"] == "skipped" and float(tags["ftctl.eval.loss"]) == 1.0
    assert "ftctl.eval.base_loss" not in tags and tags["ftctl.eval.setup"]


def test_a_model_no_better_than_the_previous_version_is_refused(az, tracking, clock) -> None:
    first = _first_version(az)
    _second_job(az, final_eval_loss=1.00001)  # better than the base (1.6), not than version `first`
    puts = len(az.service.find("PUT", r"/models/"))
    result = az("register", code=1)
    assert f"{REFUSED} not better than version {first} (1.0000 >= 1.0000)" in result.stderr, result.stderr
    assert "`ftctl register --force` registers it anyway" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(_versions(az.service)) == [first]  # nothing registered
    assert len(az.service.find("PUT", r"/models/")) == puts
    assert az.state()["stages"]["register"]["status"] == "failed"


def test_register_force_registers_past_the_gate_and_records_it(az, tracking, clock) -> None:
    first = _first_version(az)
    _second_job(az, final_eval_loss=1.7)  # worse than the base and the previous version
    refused = az("register", code=1).stderr
    assert "not better than the base model (1.7000 >= 1.6000)" in refused
    assert f"not better than version {first} (1.7000 >= 1.0000)" in refused
    forced = az("register", "--force")
    assert "registering past the gate (--force): the fine-tuned model is not better" in forced.stderr
    out = az.outputs("register")
    assert out["gate"]["result"] == "forced" and out["version"] != first
    tags = _versions(az.service)[out["version"]]
    assert tags["ftctl.gate.result"] == "forced" and float(tags["ftctl.eval.loss"]) == 1.7
    assert tags["ftctl.eval.previous_version"] == first and float(tags["ftctl.eval.previous_loss"]) == 1.0
    assert "(forced past the gate)" in az("status", "--wide").stdout


def test_gate_off_reads_no_metrics(az, tracking) -> None:
    az.settings.append("register.gate=off")
    az("run", "--to", "submit")
    since = len(tracking.requests)
    az("register")
    assert _mlflow_requests(tracking, since) == []
    assert az.outputs("register")["gate"]["result"] == "off"
    [tags] = _versions(az.service).values()
    assert tags["ftctl.gate"] == "off" and tags["ftctl.gate.result"] == "off"
    assert not any(key.startswith("ftctl.eval.") for key in tags)


def test_a_previous_version_evaluated_differently_is_not_compared(az, tracking, clock) -> None:
    first = _first_version(az)
    az.settings.append("finetune.max_seq_length=2048")  # another held-out setup
    az.service.mlflow.final_eval_loss = 1.2  # worse than version `first` (1.0), better than the base
    az("submit")
    result = az("register")
    assert f"not compared: version {first} of {NAME} was evaluated differently" in result.stderr
    assert "gate (improve): passed: held-out loss fine-tuned 1.2000, base 1.6000" in result.stderr
    out = az.outputs("register")
    assert out["gate"]["previous"] is None
    tags = _versions(az.service)[out["version"]]
    assert "ftctl.eval.previous_version" not in tags
    assert tags["ftctl.eval.setup"] != _versions(az.service)[first]["ftctl.eval.setup"]
    notes = az.json("evaluate")["notes"]  # the job's own version is not "previous": `first` still is
    assert f"not compared: version {first} of {NAME} was evaluated differently" in " ".join(notes)
    az("submit", "--force")  # a third job on the second one's setup: now version 2 is compared
    data = az.json("evaluate")
    assert data["gate"]["previous_version"] == out["version"]
    assert [m["label"] for m in data["losses"]] == ["base", "fine-tuned", "previous"]
    assert not any("not compared" in note for note in data["notes"])


def _no_finetune_run(tracking: Any, job: str) -> None:
    for run_id, run in list(tracking.mlflow.runs.items()):
        if run.job == job and run.run_name == "chat_completion_finetune":
            del tracking.mlflow.runs[run_id]


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        ("no-mlflow", 2, "reading them needs mlflow and azureml-mlflow"),
        ("no-run", 2, "no MLflow run '{job}' in the workspace yet"),
        ("no-step", 1, "job {job} (FINISHED) has no chat_completion_finetune run in MLflow"),
    ],
)
def test_unreadable_metrics_stop_register_with_a_clear_error(
    az, tracking, monkeypatch, fault: str, code: int, message: str
) -> None:
    az("run", "--to", "submit")
    job = az.outputs("submit")["job_name"]
    if fault == "no-mlflow":
        monkeypatch.setitem(sys.modules, "azureml.mlflow", None)  # import fails: not installed
    elif fault == "no-run":
        del tracking.mlflow.runs[job]
    else:
        _no_finetune_run(tracking, job)
    result = az("register", code=code)
    expected = f"register's gate (register.gate: improve) cannot read the metrics of job {job}: "
    assert expected + message.format(job=job) in result.stderr, result.stderr
    assert "register.gate: off registers without reading them" in result.stderr
    assert "Traceback" not in result.stderr
    assert _versions(az.service) == {} and not az.service.find("PUT", r"/models/")


def test_register_dry_run_reads_nothing(az, tracking) -> None:
    az("run", "--to", "submit")
    before = len(az.service.requests)
    data = az.json("register", "--dry-run")
    assert az.service.requests[before:] == []  # no login, no metrics, no model list
    assert data["status"] == "dry run" and data["outputs"]["gate"].startswith("improve (register.gate)")
    assert data["outputs"]["gate"].endswith("not read in a dry run")
    assert az.state()["stages"]["register"]["status"] == "pending"


def test_evaluate_shows_the_jobs_losses_the_previous_version_and_the_gate(az, tracking, clock) -> None:
    result = az("evaluate", code=2)
    assert "there is no fine-tuned model to evaluate: submit is pending" in result.stderr
    first = _first_version(az)
    _second_job(az, final_eval_loss=1.3)
    job = az.outputs("submit")["job_name"]
    data = az.json("evaluate")
    losses = {m["label"]: m for m in data["losses"]}
    assert losses["base"] == {
        "label": "base",
        "model": "Phi-4",
        "loss": 1.6,
        "source": "the job's metrics (eval_loss at step 0)",
        "perplexity": pytest.approx(4.953, abs=1e-3),
    }
    assert losses["fine-tuned"]["loss"] == 1.3 and losses["fine-tuned"]["source"] == "the job's metrics"
    assert losses["fine-tuned"]["model"] == f"job {job}"
    assert losses["previous"]["loss"] == 1.0 and losses["previous"]["model"] == f"{NAME} v{first}"
    assert losses["previous"]["source"] == f"tag of version {first}"
    assert data["gate"]["result"] == "refused" and data["gate"]["previous_version"] == first
    assert data["samples"] == [] and data["stop"] is None and data["job_id"] == job
    assert data["split"] == "test_sft" and data["conversations"] == 20
    assert any("side-by-side generations" in note for note in data["notes"])
    assert data["report"] is None
    text = az("evaluate").stdout
    preview = "if registered now: gate (improve): refused: held-out loss fine-tuned 1.3000, base 1.6000"
    assert f"{preview}, version {first} 1.0000" in text


def test_evaluate_without_a_step0_eval_says_the_base_is_unknown(az, tracking) -> None:
    az("run", "--to", "submit")
    data = az.json("evaluate")
    assert [m["label"] for m in data["losses"]] == ["fine-tuned"]
    assert data["gate"]["result"] == "skipped"
    assert any("the base model's held-out loss is unknown" in note for note in data["notes"])


def test_evaluate_report_on_azureml(az, tracking, tmp_path: Path) -> None:
    az.service.mlflow.start_eval_loss = 1.6
    az("run", "--to", "submit")
    folder = tmp_path / "report"
    data = az.json("evaluate", "--report", str(folder))
    assert data["report"] == str(folder / "report.md")
    text = (folder / "report.md").read_text()
    assert "## Held-out loss" in text and "| fine-tuned | 1.0000 |" in text and "| base | 1.6000 |" in text
    assert "## Training" in text  # the job's loss curves, from `ftctl metrics`
    assert "## Samples" not in text and "side-by-side generations" in text
    for png in ("eval_loss.png", "loss_curves.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_job_whose_evaluation_diverged_is_refused(az, tracking) -> None:
    """A final eval_loss that is not a number (a diverged job the service still completed) is never
    better: refused, and no version is created."""
    az.service.mlflow.start_eval_loss = 1.6
    az.service.mlflow.final_eval_loss = float("nan")
    refused = az("run", "--to", "register", code=1)
    assert f"{REFUSED} not better than the base model (nan >= 1.6000)" in refused.stderr
    assert _versions(az.service) == {}
