"""prepare-data at scale: `ftctl prepare-data --split-pc 100` against the notebook's path.

The notebook's path, per split: `datasets.load_dataset(DIR, split="<split>[0%:100%]").to_json(...)`
(with a fresh datasets cache each time, as a first run has). ftctl validates every record as well.

Every run starts after an `os.sync()` (not timed): ftctl fsyncs what it writes, the notebook's path
does not, and at full size its ~3 GB of cache and JSON were still being written back to the disk during
the ftctl run that followed it (12.6 s such a run, ~10 s one after a sync).

    python bench/prepare_data.py DATASET_DIR [--repetitions 3] [--result prepare_data_10pc]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import alternate, fmt, ftctl_command, peak_rss_of, run_measured, stats, table, write_result

GOAL_FULL = ">= 3x faster, peak RSS <= 1 GiB"
GOAL_10PC = ">= 3x faster, peak RSS <= 600 MiB"  # issue 21's row: a tenth of ultrachat_200k

NOTEBOOK = """
import sys
from datasets import get_dataset_split_names, load_dataset
source, out = sys.argv[1], sys.argv[2]
for split in get_dataset_split_names(source):
    load_dataset(source, split=f"{split}[0%:100%]").to_json(f"{out}/{split}.jsonl")
"""


def main(dataset: Path, repetitions: int, result: str = "prepare_data", goal: str = GOAL_FULL) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    workspace = scratch / ".ftctl"
    ftctl = [*ftctl_command(), "--workspace", str(workspace)]
    run_measured([*ftctl, "auth"])
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    rss: dict[str, list[int]] = {"ftctl prepare-data": [], "notebook (datasets)": []}

    def run_ftctl() -> float:
        shutil.rmtree(workspace / "data", ignore_errors=True)
        os.sync()
        command = [*ftctl, "--set", f"data.dataset={dataset}", "prepare-data", "--split-pc", "100", "--force"]
        elapsed, peak = peak_rss_of(command, env=env)
        rss["ftctl prepare-data"].append(peak)
        return elapsed

    def run_notebook() -> float:
        out = scratch / "notebook"
        cache = scratch / "hf-cache"
        for path in (out, cache):
            shutil.rmtree(path, ignore_errors=True)
        out.mkdir()
        os.sync()
        elapsed, peak = peak_rss_of(
            [sys.executable, "-c", NOTEBOOK, str(dataset), str(out)],
            env={**env, "HF_DATASETS_CACHE": str(cache)},
        )
        rss["notebook (datasets)"].append(peak)
        return elapsed

    samples = alternate({"ftctl prepare-data": run_ftctl, "notebook (datasets)": run_notebook}, repetitions)
    base = stats(samples["notebook (datasets)"])["median"]
    rows, results = [], {}
    for name, values in samples.items():
        s = stats(values)
        peak = max(rss[name])
        results[name] = {**s, "peak_rss_bytes": peak, "speedup_vs_notebook": base / s["median"]}
        rows.append(
            [
                name,
                fmt(s["median"]),
                fmt(s["min"]),
                fmt(s["max"]),
                f"{peak / 2**20:,.0f} MiB",
                f"{base / s['median']:.2f}x",
            ]
        )
    text = table(rows, ["path", "median", "min", "max", "peak RSS", "speed vs notebook"])
    print(text)
    write_result(
        result,
        {
            "dataset": str(dataset),
            "repetitions": repetitions,
            "results": results,
            "table": text,
            "goal": goal,
        },
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--result", default="prepare_data", choices=["prepare_data", "prepare_data_10pc"])
    args = parser.parse_args()
    goal = GOAL_10PC if args.result == "prepare_data_10pc" else GOAL_FULL
    main(args.dataset.resolve(), args.repetitions, args.result, goal)
