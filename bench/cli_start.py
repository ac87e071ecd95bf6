"""CLI start: `ftctl --help`, `ftctl status` and `ftctl metrics` against `python -c "import azure.ai.ml"`.

The alternative is what every CLI that imports its SDK at start-up pays on each invocation. status and
metrics run in a workspace after a full `ftctl run` (every stage has state; metrics reads the finished
job's run). Goals: --help and status at most 0.10x of the import, metrics under 0.5 s.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import alternate, fmt, ftctl_command, run_measured, stats, table, write_result


def main(repetitions: int = 10) -> dict:
    ftctl = ftctl_command()
    workspace = Path(tempfile.mkdtemp(prefix="bench-cli-")) / ".ftctl"
    # A workspace after a full run: `status` has nine stages to evaluate, `metrics` a finished job.
    run_measured([*ftctl, "--workspace", str(workspace), "run"])

    def timed(command: list[str]):
        def call() -> float:
            start = time.perf_counter()
            run_measured(command)
            return time.perf_counter() - start

        return call

    contenders = {
        "ftctl --help": timed([*ftctl, "--help"]),
        "ftctl status": timed([*ftctl, "--workspace", str(workspace), "status"]),
        "ftctl metrics": timed([*ftctl, "--workspace", str(workspace), "metrics"]),
        "python -c 'import azure.ai.ml'": timed([sys.executable, "-c", "import azure.ai.ml"]),
    }
    samples = alternate(contenders, repetitions)
    base = stats(samples["python -c 'import azure.ai.ml'"])["median"]
    rows, results = [], {}
    for name, values in samples.items():
        s = stats(values)
        results[name] = {**s, "ratio_vs_azure_import": s["median"] / base}
        rows.append([name, fmt(s["median"]), fmt(s["min"]), fmt(s["max"]), f"{s['median'] / base:.2f}x"])
    text = table(rows, ["command", "median", "min", "max", "vs import azure.ai.ml"])
    print(text)
    write_result(
        "cli_start",
        {
            "repetitions": repetitions,
            "results": results,
            "table": text,
            "goal": "--help, status <= 0.10x; metrics < 0.5 s",
        },
    )
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
