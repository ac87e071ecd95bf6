"""End to end: `ftctl run` of the local quickstart in a fresh workspace (all nine stages).

Two alternatives: the same `ftctl run` with FTCTL_WARM=off (every process starts cold, importing torch,
transformers, peft and MLflow itself, as before the warm process), and the nine stages as separate
commands (what a shell script chaining the stages does: every command pays its own imports, and no
warm process is started).

    python bench/end_to_end.py [--repetitions 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import alternate, fmt, ftctl_command, run_measured, stats, table, write_result

STAGES = [
    "auth",
    "pick-model",
    "check-compute",
    "prepare-data",
    "submit",
    "register",
    "deploy",
    "score",
    "teardown",
]


def main(repetitions: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="bench-e2e-"))

    def fresh() -> list[str]:
        shutil.rmtree(scratch / ".ftctl", ignore_errors=True)
        return [*ftctl_command(), "--workspace", str(scratch / ".ftctl")]

    def one_process(env: dict[str, str] | None = None) -> float:
        command = fresh()
        start = time.perf_counter()
        run_measured([*command, "run"], cwd=scratch, env=env)
        return time.perf_counter() - start

    def cold() -> float:
        return one_process({**os.environ, "FTCTL_WARM": "off"})

    def stage_by_stage() -> float:
        command = fresh()
        start = time.perf_counter()
        for stage in STAGES:
            run_measured([*command, stage], cwd=scratch)
        return time.perf_counter() - start

    samples = alternate(
        {"ftctl run": one_process, "ftctl run, FTCTL_WARM=off": cold, "nine ftctl commands": stage_by_stage},
        repetitions,
    )
    rows, results = [], {}
    for name, values in samples.items():
        s = stats(values)
        results[name] = s
        ratio = s["median"] / stats(samples["ftctl run"])["median"]
        rows.append([name, fmt(s["median"]), fmt(s["min"]), fmt(s["max"]), f"{ratio:.2f}x"])
    text = table(rows, ["how", "median", "min", "max", "÷ ftctl run"])
    print(text)
    write_result(
        "end_to_end", {"repetitions": repetitions, "results": results, "table": text, "goal": "<= 20 s"}
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repetitions", type=int, default=3)
    main(parser.parse_args().repetitions)
