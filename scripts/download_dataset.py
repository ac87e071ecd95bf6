"""Download a chat dataset as <split>.jsonl files: the notebook's download-dataset.py, on ftctl.

Same arguments as the notebook's helper. Each split's first --dataset_split_pc percent is validated
(records without a usable `messages` list are dropped and listed) and written to
<download_dir>/<split>.jsonl. Offline, use --dataset ftctl:ultrachat-sample or a local folder.

    python scripts/download_dataset.py --dataset ftctl:ultrachat-sample --download_dir data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftctl.data.prepare import SAMPLE_DATASET, PrepareOptions, format_dropped, prepare
from ftctl.errors import FtctlError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Download a chat dataset (ultrachat_200k format) into <split>.jsonl files.",
        epilog=f"Offline: --dataset {SAMPLE_DATASET} (the sample shipped with ftctl), a folder of "
        "<split>.jsonl files, or a folder laid out like a Hugging Face dataset repo.",
    )
    parser.add_argument("--dataset", type=str, default="HuggingFaceH4/ultrachat_200k", help="dataset name")
    parser.add_argument("--dataset_subset", type=str, default=None, help="dataset subset (configuration)")
    parser.add_argument(
        "--dataset_split_pc", type=float, default=5, help="percent of each split to keep (0 < pc <= 100)"
    )
    parser.add_argument("--download_dir", type=str, default="ultrachat_200k_dataset", help="output folder")
    parser.add_argument("--revision", type=str, default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--train_split", type=str, default="train_sft", help="the split used for training")
    args = parser.parse_args(argv)

    try:
        report = prepare(
            args.dataset,
            Path(args.download_dir),
            PrepareOptions(
                subset=args.dataset_subset,
                split_pc=args.dataset_split_pc,
                train_split=args.train_split,
                revision=args.revision,
            ),
            progress=print,
        )
    except FtctlError as exc:  # bad input exits 2, an unreachable hub (a runtime failure) 1
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    for split in report.splits:
        print(f"wrote {split.path} ({split.rows_written} rows, {split.bytes} bytes, sha256 {split.sha256})")
    dropped = format_dropped(report, limit=20)
    if dropped:
        print("dropped records:")
        for line in dropped:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
