"""Run every benchmark and rewrite the tables in bench/README.md.

    python bench/run.py [--quick] [--only NAME ...] [--dataset DIR]

--quick: fewer repetitions and a 5% dataset (minutes instead of about an hour). Without --dataset the
full-size ultrachat_200k-shaped dataset is generated first (bench/gen_ultrachat.py; ~1.5 GB).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_start  # noqa: E402
import end_to_end  # noqa: E402
import endpoint  # noqa: E402
import gen_ultrachat  # noqa: E402
import goals  # noqa: E402
import prepare_data  # noqa: E402
import status_scale  # noqa: E402
import threads  # noqa: E402
import train_throughput  # noqa: E402
from common import BENCH_DIR, RESULTS_DIR  # noqa: E402

NAMES = ["cli_start", "prepare_data", "status_scale", "train_throughput", "endpoint", "end_to_end", "threads"]
TABLES = [
    *NAMES,
    "prepare_data_10pc",
]  # prepare_data also measures a tenth of ultrachat_200k (issue 21's row)


def update_readme() -> None:
    readme = BENCH_DIR / "README.md"
    text = readme.read_text()
    for name in TABLES:
        path = RESULTS_DIR / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        machine = data["machine"]
        block = (
            f"<!-- {name}:start -->\n{data['table']}\n\n"
            f"_{machine['date']}, {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB"
            + (f", load {'/'.join(map(str, machine['load']))} (1/5/15 min)" if machine.get("load") else "")
            + f"; goal: {data.get('goal', '')}_\n<!-- {name}:end -->"
        )
        text = _replace_block(text, name, block)
    block = f"<!-- goals:start -->\n{goals.summary()}\n<!-- goals:end -->"
    readme.write_text(_replace_block(text, "goals", block))


def _replace_block(text: str, name: str, block: str) -> str:
    return re.sub(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", lambda _: block, text, flags=re.S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", choices=NAMES)
    parser.add_argument("--dataset", type=Path)
    args = parser.parse_args()
    reps = 2 if args.quick else 3
    for name in args.only or NAMES:
        print(f"\n== {name}", flush=True)
        if name == "cli_start":
            cli_start.main(10 if args.quick else 20)
        elif name in ("prepare_data", "status_scale"):
            if args.dataset is None:
                args.dataset = Path(tempfile.mkdtemp(prefix="bench-ultrachat-"))
                gen_ultrachat.write(args.dataset, scale=0.05 if args.quick else 1.0)
            if name == "prepare_data":
                tenth = Path(tempfile.mkdtemp(prefix="bench-ultrachat-10pc-"))
                gen_ultrachat.write(tenth, scale=0.1)
                prepare_data.main(tenth, 3 if args.quick else 5, "prepare_data_10pc", prepare_data.GOAL_10PC)
                prepare_data.main(args.dataset.resolve(), 1 if args.quick else 3)
            else:
                status_scale.main(args.dataset.resolve(), 5 if args.quick else 10)
        elif name == "train_throughput":
            train_throughput.main(40, reps)
        elif name == "endpoint":
            endpoint.main(48, reps)
        elif name == "end_to_end":
            end_to_end.main(reps)
        elif name == "threads":
            threads.main(reps, ["tiny", "smollm2"])
    update_readme()


if __name__ == "__main__":
    main()
