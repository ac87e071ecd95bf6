"""End to end: `ftctl run` of the local quickstart in a fresh workspace (all nine stages).

The alternative is the same nine stages as separate commands (what a shell script chaining the stages
does: every command pays its own imports), so the table shows what one process saves.

    python bench/end_to_end.py [--repetitions 3]
"""

from __future__ import annotations

import argparse
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

    def one_process() -> float:
        command = fresh()
        start = time.perf_counter()
        run_measured([*command, "run"], cwd=scratch)
        return time.perf_counter() - start

    def stage_by_stage() -> float:
        command = fresh()
        start = time.perf_counter()
        for stage in STAGES:
            run_measured([*command, stage], cwd=scratch)
        return time.perf_counter() - start

    samples = alternate({"ftctl run": one_process, "nine ftctl commands": stage_by_stage}, repetitions)
    rows, results = [], {}
    for name, values in samples.items():
        s = stats(values)
        results[name] = s
        rows.append([name, fmt(s["median"]), fmt(s["min"]), fmt(s["max"])])
    text = table(rows, ["how", "median", "min", "max"])
    print(text)
    write_result(
        "end_to_end", {"repetitions": repetitions, "results": results, "table": text, "goal": "<= 30 s"}
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repetitions", type=int, default=3)
    main(parser.parse_args().repetitions)
