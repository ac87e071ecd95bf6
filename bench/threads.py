"""torch's thread count on this machine: one thread, torch's default (one per core), and what ftctl
chooses (ftctl.threads: the idle cores from the load average), for decoding and for a LoRA training
step, with the built-in tiny model and SmolLM2-135M-Instruct (when its wheel is installed).

Each contender runs in a fresh process (a thread count is a process's): `OMP_NUM_THREADS=1`; no
setting at all (torch's default); no setting and `ftctl.threads.apply()` (ftctl's choice, with the
load average it saw). The contenders alternate, so the machine's load changes fall on all of them.
Reported side by side, as ratios to ftctl's choice (above 1: slower than ftctl's choice).

    python bench/threads.py [--repetitions 3] [--models tiny smollm2] [--model-cache DIR]

Decoding: greedy generation of 32 new tokens after a chat prompt, seconds per token (median of 3 in
one process, after a warm-up). Training: one optimizer step of LoRA (r=8, every projection) on a batch
of 4 rows x 256 tokens (SmolLM2) or 8 x 256 (tiny: its quickstart batch), loss on every token; median
of 2 after a warm-up step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from common import alternate, stats, table, write_result

WORKER = r"""
import json, os, sys, time, statistics
from pathlib import Path
model_dir, batch, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
load = os.getloadavg()[0]
chosen = reason = None
if mode == "chosen":
    from ftctl import threads
    choice = threads.apply()
    chosen, reason = choice.threads, choice.reason
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
msgs = [{"role": "user", "content": "What is the capital of France? Answer in one long sentence."}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
def decode():
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
    return (time.perf_counter() - start) / (out.shape[1] - ids["input_ids"].shape[1])
decode()
decode_s = statistics.median(decode() for _ in range(3))
names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} - {"lm_head"}
model = get_peft_model(model.train(), LoraConfig(r=8, lora_alpha=16, target_modules=sorted(names), task_type="CAUSAL_LM"))
model.config.use_cache = False
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
x = torch.randint(10, model.config.vocab_size - 10, (batch, 256))
def step():
    start = time.perf_counter()
    loss = model(input_ids=x, labels=x).loss
    loss.backward(); opt.step(); opt.zero_grad()
    return time.perf_counter() - start
step()
train_s = statistics.median(step() for _ in range(2))
print(json.dumps({"decode_s": decode_s, "train_s": train_s, "threads": torch.get_num_threads(),
                  "chosen": chosen, "reason": reason, "load": load}))
"""

MODES = {"omp1": "OMP_NUM_THREADS=1", "default": "torch's default", "chosen": "ftctl's choice"}


def run_worker(model_dir: Path, batch: int, mode: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FTCTL_THREADS")
    }
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if mode == "omp1":
        env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(model_dir), str(batch), mode],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def model_dirs(names: list[str], cache: Path | None) -> dict[str, tuple[Path, int]]:
    from ftctl.models import smollm2
    from ftctl.models.layout import shipped_model_dir

    found: dict[str, tuple[Path, int]] = {}
    if "tiny" in names:
        found["tiny"] = (shipped_model_dir(), 8)
    if "smollm2" in names:
        why = smollm2.missing()
        if why:
            print(f"smollm2 skipped: {why} ({smollm2.INSTALL_COMMAND})")
        else:
            root = cache or Path(tempfile.mkdtemp(prefix="bench-smollm2-"))
            found["smollm2"] = (smollm2.ensure_converted(root, str(root), print), 4)
    return found


# Other work beside the contenders, for a load that is known rather than whatever the machine has:
# processes that spin all the time, or for 100 ms of every 200 ms.
SPIN = "while True: pass"
HALF = "import time\nwhile True:\n    end = time.perf_counter() + 0.1\n    while time.perf_counter() < end: pass\n    time.sleep(0.1)"
BACKGROUNDS = {"none": [], "1 busy": [SPIN], "1 half-busy": [HALF], "2 busy": [SPIN, SPIN]}


@contextlib.contextmanager
def background(name: str) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", code]) for code in BACKGROUNDS[name]]
    try:
        time.sleep(1.0 if procs else 0.0)  # running before the first contender starts
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main(
    repetitions: int, names: list[str], cache: Path | None = None, loads: list[str] | None = None
) -> dict:
    rows: list[list[str]] = []
    results: dict[str, dict] = {}
    dirs = model_dirs(names, cache)
    for load_name in loads or ["machine"]:
        with contextlib.nullcontext() if load_name == "machine" else background(load_name):
            for label, (folder, batch) in dirs.items():
                rows.extend(_measure(label, folder, batch, repetitions, load_name, results))
    header = [
        "model", "measure", "OMP 1", "default", "chosen", "unit", "chosen threads",
        "OMP 1 / chosen", "default / chosen", "other work", "load (1 min)",
    ]  # fmt: skip
    text = table(rows, header)
    print(text)
    data = {
        "table": text,
        "samples": results,
        "goal": "the chosen count never slower than either (ratios >= 1)",
    }
    write_result("threads", data)
    return data


def _measure(
    label: str, folder: Path, batch: int, repetitions: int, load_name: str, results: dict[str, dict]
) -> list[list[str]]:
    rows: list[list[str]] = []
    samples: dict[str, list[dict]] = {mode: [] for mode in MODES}

    def contender(mode: str, folder: Path, batch: int, kept: list[dict]) -> Callable[[], float]:
        def once() -> float:
            result = run_worker(folder, batch, mode)
            kept.append(result)
            return float(result["train_s"])

        return once

    alternate({mode: contender(mode, folder, batch, samples[mode]) for mode in MODES}, repetitions)
    results[f"{label}, {load_name}"] = samples
    chosen_threads = sorted({s["threads"] for s in samples["chosen"]})
    loads = [s["load"] for mode in MODES for s in samples[mode]]
    for measure, key, unit in (("decode", "decode_s", "ms/token"), ("train step", "train_s", "s/step")):
        medians = {mode: stats([s[key] for s in samples[mode]])["median"] for mode in MODES}
        scale = 1000 if unit == "ms/token" else 1
        rows.append(
            [
                label,
                measure,
                *(f"{medians[mode] * scale:.{1 if scale > 1 else 2}f}" for mode in MODES),
                unit,
                "/".join(map(str, chosen_threads)),
                f"{medians['omp1'] / medians['chosen']:.2f}x",
                f"{medians['default'] / medians['chosen']:.2f}x",
                load_name,
                f"{min(loads):.1f}-{max(loads):.1f}",
            ]
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    parser.add_argument(
        "--model-cache", type=Path, help="where SmolLM2 is converted (default: a temp folder)"
    )
    parser.add_argument(
        "--loads",
        nargs="*",
        choices=["machine", *BACKGROUNDS],
        default=["machine"],
        help="other work to run beside the contenders (machine: none added, whatever the machine has)",
    )
    args = parser.parse_args()
    main(args.repetitions, args.models, args.model_cache, args.loads)
