"""Local training throughput: `ftctl submit` against a plain TRL SFTTrainer script.

Same model (the built-in tiny Phi-3), same data (the sample's train_sft), same LoRA settings, steps,
batch size, sequence length and learning rate. TRL gets assistant_only_loss=True (the chat template is
given `{% generation %}` markers, which TRL needs for that; it renders the same text) and its defaults
otherwise. Throughput = trained (non-padding) tokens per second of training time, as each trainer
reports it (train_runtime; model loading and saving are not counted on either side). TRL's bf16
default is turned off (the CPU cannot run it; ftctl trains in float32 there too).

    python bench/train_throughput.py [--steps 40] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import alternate, fmt, ftctl_command, run_measured, stats, table, write_result

TRL_SCRIPT = r"""
import json, sys, time
from pathlib import Path
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

model_dir, train_file, out_dir, steps, batch, seq, lr = sys.argv[1:8]
tokenizer = AutoTokenizer.from_pretrained(model_dir)
# The same Phi-3 rendering, with the {% generation %} markers TRL's assistant_only_loss needs.
tokenizer.chat_template = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + '<|end|>\n' }}{% endgeneration %}"
    "{% else %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
data = load_dataset("json", data_files=train_file, split="train").remove_columns(["prompt", "prompt_id"])
config = SFTConfig(
    output_dir=out_dir, max_steps=int(steps), per_device_train_batch_size=int(batch), max_length=int(seq),
    learning_rate=float(lr), lr_scheduler_type="cosine", assistant_only_loss=True, report_to="none",
    save_strategy="no", logging_steps=10, seed=42, include_num_input_tokens_seen="non_padding",
    bf16=False,  # TRL defaults to bf16, which this CPU cannot run; ftctl trains in float32 here too
)
lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                  target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
trainer = SFTTrainer(model=model_dir, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
result = trainer.train()
tokens = trainer.state.num_input_tokens_seen
print(json.dumps({"tokens": tokens, "runtime": result.metrics["train_runtime"]}))
"""


def main(steps: int, repetitions: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-"))
    workspace = scratch / ".ftctl"
    sets = [
        "--set", f"finetune.max_steps={steps}",
        "--set", "finetune.per_device_train_batch_size=8",
        "--set", "finetune.max_seq_length=256",
        "--set", "finetune.learning_rate=0.002",
    ]  # fmt: skip
    ftctl = [*ftctl_command(), "--workspace", str(workspace), *sets]
    run_measured([*ftctl, "run", "--to", "prepare-data"])
    state = json.loads((workspace / "state.json").read_text())
    model_dir = state["stages"]["pick-model"]["outputs"]["path"]
    train_file = state["stages"]["prepare-data"]["outputs"]["files"]["train_sft"]["path"]
    rates: dict[str, list[float]] = {"ftctl submit": [], "TRL SFTTrainer": []}

    def run_ftctl() -> float:
        run_measured([*ftctl, "submit", "--force"])
        outputs = json.loads((workspace / "state.json").read_text())["stages"]["submit"]["outputs"]
        rate = (
            outputs["train_tokens"] / outputs["train_runtime_s"] if outputs.get("train_runtime_s") else None
        )
        rates["ftctl submit"].append(rate or outputs["tokens_per_second"])
        return rates["ftctl submit"][-1]

    def run_trl() -> float:
        import subprocess

        out = subprocess.run(
            [sys.executable, "-c", TRL_SCRIPT, model_dir, train_file, str(scratch / "trl"), str(steps), "8", "256",
             "0.002"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rates["TRL SFTTrainer"].append(result["tokens"] / result["runtime"])
        return rates["TRL SFTTrainer"][-1]

    alternate({"ftctl submit": run_ftctl, "TRL SFTTrainer": run_trl}, repetitions)
    base = stats(rates["TRL SFTTrainer"])["median"]
    rows, results = [], {}
    for name, values in rates.items():
        s = stats(values)
        results[name] = {**s, "unit": "tokens/s", "ratio_vs_trl": s["median"] / base}
        rows.append([name, fmt(s["median"], "tok/s"), fmt(s["min"], "tok/s"), fmt(s["max"], "tok/s"),
                     f"{s['median'] / base:.2f}x"])  # fmt: skip
    text = table(rows, ["trainer", "median", "min", "max", "vs TRL"])
    print(text)
    write_result(
        "train_throughput",
        {"steps": steps, "batch": 8, "max_seq_length": 256, "repetitions": repetitions, "results": results,
         "table": text, "goal": ">= 2x TRL"},
    )  # fmt: skip
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    main(args.steps, args.repetitions)
