"""CLI start: `ftctl --help` and `ftctl status` against `python -c "import azure.ai.ml"`.

The alternative is what every CLI that imports its SDK at start-up pays on each invocation.
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
    # A workspace with state, so `status` has stages to evaluate.
    run_measured([*ftctl, "--workspace", str(workspace), "run", "--to", "prepare-data"])

    def timed(command: list[str]):
        def call() -> float:
            start = time.perf_counter()
            run_measured(command)
            return time.perf_counter() - start

        return call

    contenders = {
        "ftctl --help": timed([*ftctl, "--help"]),
        "ftctl status": timed([*ftctl, "--workspace", str(workspace), "status"]),
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
        "cli_start", {"repetitions": repetitions, "results": results, "table": text, "goal": "<= 0.10x"}
    )
    return results


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
