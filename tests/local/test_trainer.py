"""The local LoRA trainer: assistant-only masking, a short real train() run, and a learning check."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from ftctl.backends.local import trainer as tr  # noqa: E402
from ftctl.errors import DataError, UsageError  # noqa: E402
from ftctl.models.layout import shipped_model_dir  # noqa: E402

CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 12 times 3?"},
        {"role": "assistant", "content": "12 times 3 is 36."},
    ],
    [
        {"role": "user", "content": "Translate 'cat' into French."},
        {"role": "assistant", "content": "In French, 'cat' is 'chat'."},
        {"role": "user", "content": "And in Spanish?"},
        {"role": "assistant", "content": "In Spanish it is 'gato'."},
    ],
    [
        {"role": "user", "content": "Which continent is Kenya in?"},
        {"role": "assistant", "content": "Kenya is in Africa. Its capital is Nairobi."},
    ],
    [
        {"role": "user", "content": "How many minutes are in 3 hours?"},
        {"role": "assistant", "content": "3 hours is 180 minutes."},
    ],
    [
        {"role": "user", "content": "What is the plural of 'mouse'?"},
        {"role": "assistant", "content": "The plural of 'mouse' is 'mice'."},
    ],
    [
        {"role": "user", "content": "What letter comes after K?"},
        {"role": "assistant", "content": "L comes after K."},
        {"role": "user", "content": "And before it?"},
        {"role": "assistant", "content": "J comes before K."},
    ],
    [
        {"role": "user", "content": "Name a synonym of 'rapid'."},
        {"role": "assistant", "content": "A synonym of 'rapid' is 'quick'."},
    ],
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(shipped_model_dir()))


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, x in enumerate(labels + [tr.IGNORE_INDEX]):
        if x != tr.IGNORE_INDEX and start is None:
            start = i
        elif x == tr.IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _write_jsonl(path: Path, conversations: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------
# Masking
# ------------------------------------------------------------------------------------------------


def test_only_the_assistant_reply_and_its_end_token_are_trainable(tokenizer):
    messages = CONVERSATIONS[1]  # system + user + assistant
    ids, labels = tr.tokenize_conversation(tokenizer, messages, 512)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(labels) == len(ids)
    spans = _spans(labels)
    assert len(spans) == 1
    s, e = spans[0]
    assert labels[s:e] == ids[s:e]
    assert tokenizer.decode(ids[s:e]) == "12 times 3 is 36.<|end|>"
    # Everything else (system, user, role markers, newlines) is masked.
    masked = tokenizer.decode(ids[:s])
    assert masked.endswith("<|assistant|>\n") and "<|system|>" in masked and "<|user|>" in masked
    assert all(x == tr.IGNORE_INDEX for x in labels[e:])
    assert tokenizer.convert_ids_to_tokens(ids[e - 1]) == "<|end|>"


def test_multi_turn_conversations_have_one_span_per_assistant_turn(tokenizer):
    messages = CONVERSATIONS[2]
    ids, labels = tr.tokenize_conversation(tokenizer, messages, 512)
    spans = _spans(labels)
    assert [tokenizer.decode(ids[s:e]) for s, e in spans] == [
        "In French, 'cat' is 'chat'.<|end|>",
        "In Spanish it is 'gato'.<|end|>",
    ]


def test_truncation_and_conversations_without_trainable_tokens(tokenizer):
    messages = CONVERSATIONS[2]
    full_ids, _ = tr.tokenize_conversation(tokenizer, messages, 512)
    ids, labels = tr.tokenize_conversation(tokenizer, messages, 20)
    assert len(ids) == len(labels) == 20 and ids == full_ids[:20]
    # The first assistant reply starts after the user turn: cut before it, nothing is left to learn.
    first_reply = _spans(tr.tokenize_conversation(tokenizer, messages, 512)[1])[0][0]
    assert tr.tokenize_conversation(tokenizer, messages, first_reply) is None
    assert tr.tokenize_conversation(tokenizer, [{"role": "user", "content": "hello"}], 512) is None


def test_masking_follows_other_chat_templates(tokenizer):
    """A template that appends eos after the conversation (as Phi-3's own does) still masks per turn."""
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(str(shipped_model_dir()))
    other.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    )
    ids, labels = tr.tokenize_conversation(other, CONVERSATIONS[6], 512)
    texts = [other.decode(ids[s:e]) for s, e in _spans(labels)]
    assert texts == ["L comes after K.<|end|>", "J comes before K.<|end|>\n<|endoftext|>"]


def test_bad_data_names_the_file_and_line(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATIONS[0]}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        tr.load_examples(tokenizer, path, 128)
    path.write_text(
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]})
        + "\n"
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:1.*chat template"):
        tr.load_examples(tokenizer, path, 128)


def test_collator_pads_to_the_longest_example():
    batch = tr.PadCollator(pad_id=0)(
        [
            {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


# ------------------------------------------------------------------------------------------------
# Job parameters: the config model's, with its defaults
# ------------------------------------------------------------------------------------------------


def test_the_job_parameters_default_to_the_config_model():
    from ftctl.config import FinetuneSection

    assert tr._params({}) == FinetuneSection()
    assert FinetuneSection().model_dump() == tr.DEFAULT_PARAMS
    given = {"learning_rate": None, "max_eval_samples": None, "precision": 32, "lora_target_modules": "q, v"}
    p = tr._params({"params": given})
    assert p.learning_rate == FinetuneSection().learning_rate  # null: the default
    assert p.max_eval_samples is None  # null is a value of its own here: every eval conversation
    assert p.precision == "32" and p.lora_target_modules == ["q", "v"]
    assert tr._precision(tr._params({}), "cpu") == "32"  # "auto" on the CPU


def test_the_quickstart_job_parameters_pass_through_unchanged():
    """What `ftctl submit` writes into the job spec (check-compute resolves precision)."""
    from ftctl.config import load_config

    config = Path(__file__).resolve().parents[2] / "configs" / "local-quickstart.yaml"
    params = load_config(config, environ={}).values.finetune.model_dump()
    params["precision"] = "32"
    assert tr._params(json.loads(json.dumps({"params": params}))).model_dump() == params


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"learning_rate": 0}, "params.learning_rate: "),
        ({"precision": "8"}, "params.precision: "),
        ({"lr_scheduler": "cosine"}, "params.lr_scheduler: unknown parameter"),
    ],
)
def test_invalid_job_parameters_are_usage_errors(params, message):
    with pytest.raises(UsageError, match=message):
        tr._params({"params": params})


# ------------------------------------------------------------------------------------------------
# train()
# ------------------------------------------------------------------------------------------------


def _short_job_spec(tmp_path: Path, db: Path) -> dict:
    return {
        "job_id": "job-1",
        "model_path": str(shipped_model_dir()),
        "train_file": str(_write_jsonl(tmp_path / "train.jsonl", CONVERSATIONS * 2)),
        "eval_file": str(_write_jsonl(tmp_path / "eval.jsonl", CONVERSATIONS[:4])),
        "params": {
            "max_steps": 5,
            "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 4,
            "logging_steps": 2,
            "learning_rate": 1e-3,
            "max_seq_length": 128,
            "apply_lora": True,
            "lora_target_modules": None,
            "merge_lora_weights": True,
            "seed": 7,
        },
        "device": "cpu",
        "mlflow": {"tracking_uri": f"sqlite:///{db}", "experiment": "ftctl-test", "run_name": "job-1"},
    }


def _check_result(result: dict) -> None:
    for key in (
        "mlflow_run_id",
        "train_loss",
        "eval_loss",
        "perplexity",
        "train_tokens",
        "tokens_per_second",
        "train_runtime_s",
        "steps",
        "train_examples",
        "dropped_examples",
        "model_dir",
        "hf_model_dir",
    ):
        assert key in result, key
    assert result["steps"] == 5 and result["train_examples"] == 16 and result["dropped_examples"] == 0
    assert math.isfinite(result["train_loss"]) and math.isfinite(result["eval_loss"])
    assert result["perplexity"] == pytest.approx(math.exp(result["eval_loss"]))
    assert result["train_tokens"] > 0 and result["tokens_per_second"] > 0


def _check_events(job: Path) -> None:
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "eval" in kinds
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["step"] == 5 and progress[-1]["max_steps"] == 5
    assert set(progress[0]) >= {"step", "max_steps", "epoch", "loss", "learning_rate", "tokens_per_second"}


def _check_model_folders(result: dict) -> None:
    from transformers import AutoModelForCausalLM

    from ftctl.models.layout import resolve_hf_dir

    hf_dir = Path(result["hf_model_dir"])
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir))
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert not any("lora" in name for name, _ in model.named_parameters())
    model_dir = Path(result["model_dir"])
    assert (model_dir / "MLmodel").is_file()
    assert resolve_hf_dir(model_dir) == model_dir / "artifacts" / "hf_model"


def _check_mlflow_run(db: Path, result: dict, tmp_path: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert {"loss", "learning_rate", "train_loss", "eval_loss", "perplexity"} <= set(run.data.metrics)
    assert run.data.params["lora_r"] == str(tr.DEFAULT_PARAMS["lora_r"])
    # Artifacts live next to the database, not in the working directory.
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(tmp_path)
    # What the register stage does.
    version = mlflow.register_model(f"runs:/{result['mlflow_run_id']}/mlflow_model", "tiny-chat")
    assert str(version.version) == "1"
    loaded = mlflow.pyfunc.load_model(f"models:/tiny-chat/{version.version}")
    reply = loaded.predict(
        [{"messages": [{"role": "user", "content": "What is the capital of France?"}]}],
        params={"max_new_tokens": 8},
    )
    assert isinstance(reply, list) and len(reply) == 1 and isinstance(reply[0], str)


@pytest.mark.integration  # trains
def test_a_short_job_writes_models_result_events_and_an_mlflow_run(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    db = tmp_path / "mlflow.db"
    spec = _short_job_spec(tmp_path, db)
    (job / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    assert tr.main([str(job)]) == 0

    result = json.loads((job / "result.json").read_text())
    _check_result(result)
    _check_events(job)
    _check_model_folders(result)
    _check_mlflow_run(db, result, tmp_path)


def _mean_loss(model, examples) -> float:
    import torch

    batch = tr.PadCollator(pad_id=0)(examples)
    with torch.no_grad():
        return float(model(**batch).loss)


@pytest.mark.integration  # trains
def test_training_lowers_the_loss_and_the_merged_model_keeps_it(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    train_file = _write_jsonl(tmp_path / "train.jsonl", CONVERSATIONS)
    spec = {
        "job_id": "learn",
        "model_path": str(shipped_model_dir()),
        "train_file": str(train_file),
        "eval_file": str(train_file),
        "params": {
            "max_steps": 20,
            "per_device_train_batch_size": 4,
            "learning_rate": 1e-2,
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
            "max_seq_length": 128,
            "lora_r": 8,
            "lora_alpha": 16,
            "seed": 3,
        },
        "device": "cpu",
    }
    events: list[dict] = []
    result = tr.train(spec, tmp_path / "job", events.append)
    assert result["mlflow_run_id"] is None

    examples, _ = tr.load_examples(tokenizer, train_file, 128)
    before = _mean_loss(AutoModelForCausalLM.from_pretrained(str(shipped_model_dir())), examples)
    after = _mean_loss(AutoModelForCausalLM.from_pretrained(result["hf_model_dir"]), examples)
    assert after < 0.6 * before, (before, after)  # measured: 1.85 -> 0.68
    # The merged model computes what the LoRA model evaluated.
    assert after == pytest.approx(result["eval_loss"], rel=1e-3)
    losses = [e["loss"] for e in events if e["type"] == "progress"]
    assert len(losses) == 20 and sum(losses[-3:]) < 0.6 * sum(losses[:3])


def test_the_job_entry_point_reports_a_missing_spec(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ftctl.backends.local.trainer", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "spec.json" in proc.stderr
