"""Issue 21's rows side by side, from the results the benchmarks wrote (bench/results/*.json).

    python bench/goals.py        # print the table; bench/run.py also writes it into bench/README.md

Each row names the result it comes from, when that was measured and the machine's load then: rows
measured at different times are comparable only as ratios, each against its own alternative.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from common import RESULTS_DIR, table

Row = tuple[str, str, str, Callable[[dict[str, Any]], float], Callable[[float], str], Callable[[float], bool]]

ROWS: list[Row] = [
    ("`ftctl run` quickstart, fresh folder", "end_to_end", "<= 20 s",
     lambda r: r["results"]["ftctl run"]["median"], lambda v: f"{v:.1f} s", lambda v: v <= 20),
    ("`ftctl status` / `import azure.ai.ml`", "cli_start", "<= 0.10x",
     lambda r: r["results"]["ftctl status"]["ratio_vs_azure_import"], lambda v: f"{v:.2f}x", lambda v: v <= 0.10),
    ("`ftctl --help` / `import azure.ai.ml`", "cli_start", "<= 0.08x",
     lambda r: r["results"]["ftctl --help"]["ratio_vs_azure_import"], lambda v: f"{v:.2f}x", lambda v: v <= 0.08),
    ("`ftctl metrics` on a finished job", "cli_start", "< 0.5 s",
     lambda r: r["results"]["ftctl metrics"]["median"], lambda v: f"{v * 1000:.0f} ms", lambda v: v < 0.5),
    ("prepare-data speed / notebook, 10 % scale", "prepare_data_10pc", ">= 3x",
     lambda r: r["results"]["ftctl prepare-data"]["speedup_vs_notebook"], lambda v: f"{v:.2f}x", lambda v: v >= 3),
    ("prepare-data peak RSS, 10 % scale", "prepare_data_10pc", "<= 600 MiB",
     lambda r: r["results"]["ftctl prepare-data"]["peak_rss_bytes"] / 2**20, lambda v: f"{v:,.0f} MiB",
     lambda v: v <= 600),
    ("prepare-data speed / notebook, full scale", "prepare_data", ">= 3x",
     lambda r: r["results"]["ftctl prepare-data"]["speedup_vs_notebook"], lambda v: f"{v:.2f}x", lambda v: v >= 3),
    ("endpoint req/s at 16 clients / `mlflow models serve`", "endpoint", ">= 10x",
     lambda r: r["results"]["ftctl endpoint"]["16"]["rps"] / r["results"]["mlflow models serve"]["16"]["rps"],
     lambda v: f"{v:.2f}x", lambda v: v >= 10),
    ("endpoint p50 overhead (latency - model time), 1 client", "endpoint", "< 5 ms",
     lambda r: r["overhead_p50_s"], lambda v: f"{v * 1000:.1f} ms", lambda v: v < 0.005),
    ("endpoint p50 - bare `generate` in its own process", "endpoint", "< 5 ms",
     lambda r: r["unpaired_overhead_p50_s"], lambda v: f"{v * 1000:.1f} ms", lambda v: v < 0.005),
    ("training tokens/s / TRL SFTTrainer (keep)", "train_throughput", ">= 2x",
     lambda r: r["results"]["ftctl submit"]["ratio_vs_trl"], lambda v: f"{v:.2f}x", lambda v: v >= 2),
]  # fmt: skip


def summary() -> str:
    rows = []
    for measure, name, goal, value, shown, met in ROWS:
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            rows.append([measure, "not measured", goal, "", name])
            continue
        result = json.loads(path.read_text())
        v = value(result)
        machine = result["machine"]
        load = "/".join(map(str, machine["load"])) if machine.get("load") else "not recorded"
        when = f"{name}, {machine['date'][:16].replace('T', ' ')}, load {load}"
        rows.append([measure, shown(v), goal, "yes" if met(v) else "**no**", when])
    return table(rows, ["measure", "now", "goal", "met", "result, measured, load (1/5/15 min)"])


if __name__ == "__main__":
    print(summary())
