"""After training: the end-of-turn check, `ftctl evaluate` (and its report), the promotion gate in
`register`, and the chat-template check in `deploy`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ftctl.evaluation import FADING_MESSAGE, STOP_MESSAGE, StopCheck, decide

pytestmark = pytest.mark.slow

# The end of each turn is written as the start of the next one, so the trainer's labels never hold it
# (the classic bug: the model learns the replies, not where they end).
END_AS_NEXT_PREFIX = (
    "{% for m in messages %}{% if not loop.first %}{{ '<|end|>\n' }}{% endif %}"
    "{{ '<|' + m['role'] + '|>\n' + m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '<|end|>\n' }}{% endif %}"
    "{{ '<|assistant|>\n' }}{% endif %}"
)


def _registered_tags(ws) -> dict[str, str]:
    import mlflow

    out = ws.outputs("register")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws.workspace / 'mlflow.db'}")
    return dict(client.get_model_version(out["model_name"], out["version"]).tags)


def _step0_eval_loss(ws) -> float:
    events = Path(ws.outputs("submit")["job_dir"], "events.jsonl").read_text().splitlines()
    return next(e["eval_loss"] for e in map(json.loads, events) if e["type"] == "eval" and e["step"] == 0)


def test_training_records_the_end_of_turn_check_and_register_the_gate(trained) -> None:
    submit = trained.outputs("submit")
    assert submit["stop_check"]["ok"] is True and submit["stop_check"]["prompts"] == 8
    assert submit["stop_check"]["labels_end_turn"] is True
    gate = trained.outputs("register")["gate"]
    assert gate["result"] == "passed" and gate["fine_tuned"] < gate["base"]
    tags = _registered_tags(trained)
    assert tags["ftctl.gate"] == "improve" and tags["ftctl.gate.result"] == "passed"
    assert float(tags["ftctl.eval.loss"]) == pytest.approx(submit["eval_loss"], abs=1e-6)
    assert float(tags["ftctl.eval.base_loss"]) == pytest.approx(_step0_eval_loss(trained), abs=1e-6)
    assert tags["ftctl.eval.setup"] and tags["ftctl.eval.stops"].endswith("/8")
    status = {s["name"]: s for s in trained.json("status")["stages"]}
    assert STOP_MESSAGE not in trained("status").stdout and status["register"]["status"] == "succeeded"


def test_evaluate_computes_the_jobs_losses_and_writes_a_report(trained, tmp_path: Path) -> None:
    ws = trained.copy(tmp_path / "ws")
    report = tmp_path / "r"
    data = ws.json("evaluate", "--report", str(report))
    losses = {m["label"]: m for m in data["losses"]}
    # The base model's held-out loss is the job's eval_loss before training; the fine-tuned one its last.
    assert losses["base"]["loss"] == pytest.approx(_step0_eval_loss(ws), abs=2e-3)
    assert losses["fine-tuned"]["loss"] == pytest.approx(ws.outputs("submit")["eval_loss"], abs=2e-3)
    assert "previous" not in losses  # the only registered version is this job's
    assert losses["base"]["perplexity"] == pytest.approx(math.exp(losses["base"]["loss"]))
    assert data["stop"]["ok"] is True and data["base_stop"]["prompts"] == 8
    assert len(data["samples"]) == 3 and all(
        set(s["replies"]) == {"base", "fine-tuned"} for s in data["samples"]
    )
    assert data["gate"]["result"] == "passed"
    text = (report / "report.md").read_text()
    for image in ("eval_loss.png", "loss_curves.png", "token_lengths.png"):
        assert f"]({image})" in text and (report / image).read_bytes()[:4] == b"\x89PNG"
    assert "## Held-out loss" in text and "## The plan" in text and "**reference:**" in text
    shown = ws("evaluate", "--samples", "1").stdout
    assert "held-out loss on test_sft" in shown and "end of turn: 8/8" in shown and "[1] user:" in shown


def test_the_gate_refuses_a_worse_model_and_register_force_records_it(trained, tmp_path: Path) -> None:
    ws = trained.copy(tmp_path / "ws")
    first = ws.outputs("register")["version"]
    # The same job again (deterministic: the same base model, data, settings and held-out loss) is the
    # model version `first` already holds: register uses it, neither refusing it nor registering it twice.
    ws("submit", "--force")
    same = ws("register")
    assert f"the same model as version {first}" in same.stderr
    assert ws.outputs("register")["version"] == first and ws.outputs("register")["gate"]["result"] == "same"
    # A harmful learning rate: worse than the base model.
    ws("submit", "--set", "finetune.learning_rate=0.5")
    bad = ws("register", "--set", "finetune.learning_rate=0.5", code=1)
    refused = "register refused by the gate (register.gate: improve): the fine-tuned model is not better"
    assert f"{refused} than the base model (" in bad.stderr
    assert ws.state()["stages"]["register"]["status"] == "failed"
    forced = ws("register", "--force", "--set", "finetune.learning_rate=0.5")
    assert "registering past the gate (--force)" in forced.stderr
    out = ws.outputs("register")
    assert out["gate"]["result"] == "forced" and int(out["version"]) == int(first) + 1
    assert _registered_tags(ws)["ftctl.gate.result"] == "forced"
    assert "(forced past the gate)" in ws("status", "--set", "finetune.learning_rate=0.5").stdout
    # The forced model again, even with --force: it is version first + 1 already.
    again = ws("register", "--force", "--set", "finetune.learning_rate=0.5")
    assert f"the same model as version {int(first) + 1}" in again.stderr
    # register.gate: off registers without comparing.
    off = ["--set", "finetune.learning_rate=0.3", "--set", "register.gate=off"]
    ws("submit", *off)
    ws("register", *off)
    assert ws.outputs("register")["gate"]["result"] == "off" and "(forced" not in ws("status", *off).stdout
    assert int(ws.outputs("register")["version"]) == int(first) + 2
    # Back to the default learning rate after the experiment: the job trains the model of version
    # `first` again, and the pipeline goes on with that version (found walking the quickstart: it was
    # refused as "not better than version 1", which it is, being the same).
    back = ws("run", "--to", "register")
    assert f"the same model as version {first}" in back.stderr
    assert ws.outputs("register")["version"] == first


def test_deploy_refuses_a_model_prompted_differently_from_training(
    trained, template_model, tmp_path: Path
) -> None:
    ws = trained.copy(tmp_path / "ws")
    # The base model's template changed since training (a re-downloaded model, say): the endpoint, with
    # the registered tokenizer, would no longer prompt the model as it was trained.
    changed = template_model(
        "changed",
        "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}",
    )
    state = ws.state()
    state["stages"]["pick-model"]["outputs"]["path"] = str(changed)
    (ws.workspace / "state.json").write_text(json.dumps(state))
    refused = ws("deploy", code=2)
    assert (
        "the endpoint would format conversations differently from training: conversation 1" in refused.stderr
    )
    assert ws.state()["stages"]["deploy"]["status"] == "failed"
    assert not list((ws.workspace / "secrets").glob("*.key"))


def test_a_template_that_leaves_the_end_of_turn_unlabelled_is_caught(
    prepared, template_model, tmp_path
) -> None:
    ws = prepared.copy(tmp_path / "ws")
    model = template_model("model", END_AS_NEXT_PREFIX)
    ws("pick-model", "--model", str(model))
    fast = ["--set", "finetune.learning_rate=0.01", "--set", "finetune.max_steps=10"]
    planned = ws("plan", "--no-calibrate", *fast)
    assert "end no reply with an end-of-turn token: the model will not learn to stop" in planned.stdout
    submitted = ws("submit", *fast)
    assert f"warning: {STOP_MESSAGE}" in submitted.stderr
    check = ws.outputs("submit")["stop_check"]
    assert check["ok"] is False and check["labels_end_turn"] is False
    assert check["end_probability"] < 0.9  # it was 0.99 before training: the model is unlearning to stop
    status = {s["name"]: s for s in ws.json("status", *fast)["stages"]}
    assert STOP_MESSAGE in ws("status", *fast).stdout and status["submit"]["status"] == "succeeded"
    evaluated = ws("evaluate", "--samples", "0", *fast).stdout
    assert f"warning: {STOP_MESSAGE}" in evaluated


def test_masked_end_of_turn_labels_make_the_check_fire(prepared, tmp_path: Path, monkeypatch) -> None:
    """The trainer's own template, with the end-of-turn token masked out of the labels in-process: the
    check fires on the model's behaviour alone (the real labels do hold the token)."""
    from ftctl.backends.local import evaluate as ev
    from ftctl.backends.local import trainer as tr

    real = tr.tokenize_conversation

    def masked(tokenizer, messages, max_seq_length):
        found = real(tokenizer, messages, max_seq_length)
        if found is None:
            return None
        end = tokenizer.convert_tokens_to_ids("<|end|>")
        labels = [tr.IGNORE_INDEX if i == end else label for i, label in zip(found[0], found[1], strict=True)]
        return (found[0], labels) if any(x != tr.IGNORE_INDEX for x in labels) else None

    files = {k: Path(v["path"]) for k, v in prepared.outputs("prepare-data")["files"].items()}
    spec = {
        "model_path": prepared.outputs("pick-model")["path"],
        "train_file": str(files["train_sft"]),
        "eval_file": None,
        "params": {"max_steps": 10, "learning_rate": 0.01, "max_seq_length": 128, "logging_steps": 10},
        "device": "cpu",
    }
    monkeypatch.setattr(tr, "tokenize_conversation", masked)
    result = tr.train(spec, tmp_path / "job", lambda event: None)
    monkeypatch.setattr(tr, "tokenize_conversation", real)
    model_dir = Path(result["hf_model_dir"])
    check = ev.stop_check(ev.load_model(model_dir, "cpu"), ev.load_tokenizer(model_dir), model_dir,
                          ev.held_out(files["test_sft"], 64))  # fmt: skip
    assert check.labels_end_turn is True and check.end_probability is not None
    assert check.end_probability < 0.3 and not check.ok, check
    assert check.message in (STOP_MESSAGE, FADING_MESSAGE)


@pytest.mark.parametrize(
    ("args", "result"),
    [
        (("improve", 3.0, 4.0), "passed"),
        (("improve", 4.0, 4.0), "refused"),
        (("improve", 3.99999, 4.0), "refused"),  # the same model, computed twice: not an improvement
        (("improve", float("nan"), 4.0), "refused"),
        (("improve", 3.0, 4.0, 2.5, "2"), "refused"),
        (("improve", 3.0, 4.0, float("nan"), "2"), "passed"),  # a broken previous version is not compared
        (("improve", None, None), "skipped"),
        (("off", 9.0, 4.0), "off"),
    ],
)
def test_gate_decisions(args: tuple, result: str) -> None:
    assert decide(*args).result == result
    assert decide(*args, forced=True).result == ("forced" if result == "refused" else result)


def test_stop_check_verdicts() -> None:
    good = StopCheck(8, 8, [32] * 8, "<|end|>", 0.95, labels_end_turn=True)
    assert good.ok
    assert StopCheck(8, 4, [32] * 8, "<|end|>", 0.95).message == STOP_MESSAGE  # half do not stop
    fading = StopCheck(8, 8, [32] * 8, "<|end|>", 0.1)  # replies stop, but the end of turn is fading
    assert not fading.ok and fading.message == FADING_MESSAGE
    assert not StopCheck(8, 8, [32] * 8, "<|end|>", 0.95, labels_end_turn=False).ok


def test_evaluate_on_azureml_refuses_a_local_workspace(prepared) -> None:
    """Azure ML evaluates from its job's metrics (tests/azureml/test_azureml_gate.py); a workspace that
    holds a local run has no such job."""
    stderr = prepared("--backend", "azureml", "evaluate", code=2).stderr
    assert "holds a local run, but the backend is now azureml" in stderr
