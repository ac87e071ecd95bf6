"""`ftctl status` on a workspace prepared at full ultrachat_200k size, against the same command on the
quickstart workspace (the sample's 1,600 conversations) and `ftctl --help`.

status evaluates the whole pipeline: each stage's config keys, the signatures of the files it reads and
of the files it produced. Files over 64 MiB are signed by size and mtime, smaller ones by content (once
per process), so the cost should not grow with the dataset.

    python bench/status_scale.py DATASET_DIR [--repetitions 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import alternate, fmt, ftctl_command, run_measured, stats, table, write_result


def prepared_workspace(dataset: Path | None) -> Path:
    workspace = Path(tempfile.mkdtemp(prefix="bench-status-")) / ".ftctl"
    ftctl = [*ftctl_command(), "--workspace", str(workspace)]
    extra = ["--set", f"data.dataset={dataset}", "--set", "data.split_pc=100"] if dataset else []
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run_measured([*ftctl, *extra, "run", "--to", "prepare-data"], env=env)
    return workspace


def main(dataset: Path, repetitions: int) -> dict:
    full, sample = prepared_workspace(dataset), prepared_workspace(None)
    data_bytes = sum(p.stat().st_size for p in (full / "data").glob("*.jsonl"))

    def timed(command: list[str]):
        def call() -> float:
            start = time.perf_counter()
            run_measured(command)
            return time.perf_counter() - start

        return call

    ftctl = ftctl_command()
    contenders = {
        "ftctl status (full ultrachat_200k)": timed([*ftctl, "--workspace", str(full), "status"]),
        "ftctl status (quickstart sample)": timed([*ftctl, "--workspace", str(sample), "status"]),
        "ftctl --help": timed([*ftctl, "--help"]),
    }
    samples = alternate(contenders, repetitions)
    base = stats(samples["ftctl status (quickstart sample)"])["median"]
    rows, results = [], {}
    for name, values in samples.items():
        s = stats(values)
        results[name] = {**s, "ratio_vs_sample_status": s["median"] / base}
        rows.append([name, fmt(s["median"]), f"{s['median'] / base:.2f}x"])
    out = table(rows, ["command", "median", "vs status on the sample"])
    print(out)
    note = f"prepared data: {data_bytes / 2**30:.2f} GiB of JSONL; {repetitions} runs each, alternating"
    return write_result(
        "status_scale",
        {
            "results": results,
            "table": f"{out}\n\n{note}",
            "goal": "status at full scale within 1.2x of the sample",
        },
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--repetitions", type=int, default=10)
    args = parser.parse_args()
    main(args.dataset.resolve(), args.repetitions)
