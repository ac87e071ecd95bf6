"""`ftctl plan` and the check `ftctl submit` makes first: the token statistics are the trainer's own
counts, and every refusal and warning fires (and `--no-plan` skips them)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from ftctl import plan as p
from ftctl.backends.local import trainer as tr
from ftctl.data.chat_tokens import load_chat_tokenizer
from ftctl.models.layout import shipped_model_dir


def _files(ws) -> dict[str, Path]:
    return {k: Path(v["path"]) for k, v in ws.outputs("prepare-data")["files"].items()}


def test_plan_counts_tokens_rows_and_steps_as_the_trainer_does(scratch) -> None:
    data = scratch.json("plan", "--no-calibrate")
    train = next(s for s in data["splits"] if s["split"] == "train_sft")
    tokenizer = load_chat_tokenizer(shipped_model_dir())
    path = _files(scratch)["train_sft"]
    examples, dropped = tr.load_examples(tokenizer, path, 128)
    full, _ = tr.load_examples(tokenizer, path, 1 << 30)
    lengths = sorted(len(e["input_ids"]) for e in full)
    assert train["conversations"] == len(full) + dropped == 400 and not train["estimated"]
    assert train["dropped"] == dropped
    assert train["tokens"] == sum(lengths)
    assert (train["p50"], train["p99"], train["max"]) == (
        p.percentile(lengths, 50),
        p.percentile(lengths, 99),
        lengths[-1],
    )
    kept_labels = sum(sum(1 for x in e["labels"] if x != tr.IGNORE_INDEX) for e in examples)
    assert train["assistant_tokens"] - train["assistant_tokens_lost"] == kept_labels
    assert train["truncated"] == sum(1 for n in lengths if n > 128) > 0
    assert train["tokens_kept"] == sum(len(e["input_ids"]) for e in examples)
    run = data["run"]
    assert run["train_rows"] == len(tr.pack_examples(examples, 128, 42))
    assert run["steps"] == 6 and run["effective_batch"] == 4  # max_steps: 6, batch 4
    assert data["model"]["trainable"] == 57_344  # LoRA r=8 on qkv, o, gate_up, down of 4 layers
    assert data["memory"]["verdict"] == "fits" and data["ok"] is True
    text = scratch("plan", "--no-calibrate").stdout
    assert "train_sft" in text and "P99" in text and "effective batch 4" in text and "ok: " in text


def test_trainable_count_matches_peft() -> None:
    from transformers import AutoModelForCausalLM

    params = tr._params({"params": {}})
    model = tr._with_lora(AutoModelForCausalLM.from_pretrained(str(shipped_model_dir())), params)
    shape = p.ModelShape.from_config(json.loads((shipped_model_dir() / "config.json").read_text()), None)
    assert shape.lora_parameters(8, tr.PHI3_LORA_TARGETS) == sum(
        x.numel() for x in model.parameters() if x.requires_grad
    )


def test_packing_and_step_arithmetic_match_the_trainer() -> None:
    rng = random.Random(3)
    for _ in range(20):
        lengths = [rng.randint(5, 120) for _ in range(rng.randint(1, 200))]
        examples = [{"input_ids": [1] * n, "labels": [1] * n} for n in lengths]
        seed, max_len = rng.randint(0, 99), rng.choice([64, 128, 256])
        assert p.packed_rows(lengths, max_len, seed) == len(tr.pack_examples(examples, max_len, seed))
        rows, batch, acc, epochs = (
            rng.randint(1, 999),
            rng.randint(1, 16),
            rng.randint(1, 8),
            rng.randint(1, 5),
        )
        # The Trainer's count, walked: each epoch, batches of `batch` rows (the last may be short), an
        # update every `acc` batches (the last may take fewer).
        walked = 0
        for _ in range(epochs):
            batches = len(range(0, rows, batch))
            walked += len(range(0, batches, acc))
        assert p.planned_steps(rows, batch, acc, 1, epochs, -1) == walked
        assert p.planned_steps(rows, batch, acc, 1, epochs, 7) == 7  # max_steps wins


def test_sampled_statistics_are_labelled_and_scaled(scratch) -> None:
    data = scratch.json("plan", "--no-calibrate", "--set", "plan.sample_rows=50")
    train = next(s for s in data["splits"] if s["split"] == "train_sft")
    assert train["estimated"] and train["analysed"] == 50 and train["conversations"] == 400
    exact = scratch.json("plan", "--no-calibrate")["splits"][0]["tokens"]
    assert abs(train["tokens"] / exact - 1) < 0.25
    assert (
        "counted on an evenly spaced sample"
        in scratch("plan", "--no-calibrate", "--set", "plan.sample_rows=50").stdout
    )


def test_submit_refuses_max_seq_length_above_the_context(scratch) -> None:
    refused = scratch("submit", "--set", "finetune.max_seq_length=4096", code=2)
    assert (
        "submit refused: finetune.max_seq_length 4096 is above the model's context length 2048"
        in refused.stderr
    )
    assert "set finetune.max_seq_length to at most 2048" in refused.stderr
    assert scratch.state()["stages"]["submit"]["status"] == "failed"
    assert not (scratch.workspace / "jobs").exists() or not list((scratch.workspace / "jobs").iterdir())
    assert (
        "above the model's context"
        in scratch("plan", "--no-calibrate", "--set", "finetune.max_seq_length=4096", code=2).stderr
    )


def test_submit_warns_about_truncation_and_no_plan_skips_the_check(scratch) -> None:
    plan = scratch.json("plan", "--no-calibrate", "--set", "finetune.max_seq_length=32")
    warning = next(f for f in plan["findings"] if f["level"] == "warning")
    assert "max_seq_length 32 cuts" in warning["message"] and "max_seq_length=" in warning["hint"]
    started = scratch("submit", "--no-wait", "--set", "finetune.max_seq_length=32")
    try:
        assert "warning: max_seq_length 32 cuts" in started.stderr and "  plan: " in started.stderr
    finally:
        scratch("reset", "submit")  # stops the job it started
    skipped = scratch("submit", "--no-wait", "--no-plan", "--set", "finetune.max_seq_length=4096")
    try:
        assert "  plan: " not in skipped.stderr and "job " in skipped.stderr
    finally:
        scratch("reset", "submit")


def test_submit_refuses_a_template_that_renders_no_assistant_reply(scratch, tmp_path: Path) -> None:
    model = tmp_path / "user-only-template"
    shutil.copytree(shipped_model_dir(), model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + '<|end|>\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    scratch("pick-model", "--model", str(model))
    refused = scratch("submit", code=2)
    assert "submit refused: train_sft has no assistant tokens to train on" in refused.stderr


def test_submit_refuses_a_definite_out_of_memory(scratch) -> None:
    big = ["--set", "finetune.per_device_train_batch_size=4096", "--set", "finetune.max_seq_length=2048"]
    refused = scratch("plan", "--no-calibrate", *big, code=2)
    assert "out of memory: training needs about" in refused.stderr
    assert (
        "per_device_train_batch_size=" in refused.stderr and "gradient_accumulation_steps" in refused.stderr
    )
    assert "[oom]" in refused.stdout
    assert "out of memory" in scratch("submit", *big, code=2).stderr


def test_memory_findings_and_the_change_that_fits() -> None:
    shape = p.ModelShape.from_config(json.loads((shipped_model_dir() / "config.json").read_text()), None)
    setup = p.MemorySetup(device="cpu", precision="32", batch=8, seq=256, lora=True, trainable=57_344)
    fits = p.estimate_memory(shape, setup, 64 * p.GiB, "RAM")
    assert fits.verdict == "fits" and fits.suggestion is None
    tight = p.estimate_memory(shape, setup, int(fits.total_bytes / 0.95), "RAM")
    assert tight.verdict == "tight" and tight.suggestion
    oom = p.estimate_memory(shape, setup, int(fits.total_bytes / 2), "RAM")
    assert oom.verdict == "oom"
    plan = p.Plan("local", {"context_length": 2048}, {"max_seq_length": 256}, [], None, tight, None, "x")
    assert [f.level for f in p.check(plan, "train_sft")] == ["warning"]
    plan.memory = oom
    assert [f.level for f in p.check(plan, "train_sft")] == ["error"]
    # A GPU: 16-bit weights under LoRA, ZeRO-3 sharding everything across 4 GPUs.
    gpu = p.MemorySetup(
        device="cuda", precision="bf16", batch=8, seq=256, lora=False, trainable=shape.parameters,
        devices=4, zero_stage=3,
    )  # fmt: skip
    sharded = p.estimate_memory(shape, gpu, 80 * p.GiB, "A100")
    single = p.estimate_memory(
        shape, p.MemorySetup(**{**gpu.__dict__, "zero_stage": None}), 80 * p.GiB, "A100"
    )
    assert sharded.components["optimizer"] * 4 == single.components["optimizer"]


def test_plan_on_azureml_does_not_read_a_local_run(scratch) -> None:
    """A workspace that holds a local run has no Azure ML plan (tests/azureml/test_azureml_plan.py plans
    Azure ML runs)."""
    refused = scratch("--backend", "azureml", "plan", code=2)
    assert "holds a local run, but the backend is now azureml" in refused.stderr


@pytest.mark.parametrize(
    "values,q,expected", [([], 50, 0), ([5], 99, 5), ([1, 2, 3, 4], 50, 2), (list(range(1, 101)), 99, 99)]
)
def test_percentile(values: list[int], q: float, expected: int) -> None:
    assert p.percentile(values, q) == expected
