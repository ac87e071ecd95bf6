"""prepare-data: the notebook's download-dataset.py step, validating every record.

The same code runs as `scripts/download_dataset.py` (the notebook's arguments). Writes one
<split>.jsonl per split under data.download_dir (inside the workspace unless absolute) and records
row counts, dropped records and sha256 per file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.data.prepare import SAMPLE_DATASET, format_dropped, prepare, sample_dataset_dir

if TYPE_CHECKING:
    from ftctl.context import Context


def inputs(ctx: Context, state: dict[str, Any]) -> dict[str, Path]:
    dataset = ctx.cfg.data.dataset
    if dataset == SAMPLE_DATASET:
        return {"dataset": sample_dataset_dir()}
    path = Path(dataset).expanduser()
    return {"dataset": path} if path.exists() else {}


def run(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    cfg = ctx.cfg.data
    out_dir = ctx.data_dir()
    ctx.ui.info(f"  {cfg.dataset} -> {out_dir} ({cfg.split_pc:g}% of each split)")
    with ctx.ui.progress("reading and validating", unit="rows") as bar:
        rows = 0

        def progress(line: str) -> None:  # "<split>: N rows, M dropped" once a split is done
            nonlocal rows
            bar.log(f"  {line}")
            found = re.match(r"\S+: (\d+) rows", line)
            if found:
                rows += int(found.group(1))
                bar.update(rows, quiet=True)

        report = prepare(
            cfg.dataset,
            out_dir,
            subset=cfg.subset,
            split_pc=cfg.split_pc,
            train_split=cfg.train_split,
            min_train_rows=cfg.min_train_rows,
            revision=cfg.revision,
            progress=progress,
        )
    for line in format_dropped(report):
        ctx.ui.warn(f"dropped {line}")
    names = [split.name for split in report.splits]
    for split in (cfg.test_split, cfg.score_split):
        if split not in names:
            ctx.ui.warn(f"no {split!r} split in {cfg.dataset} (it has {', '.join(names)})")
    return {
        "dataset": cfg.dataset,
        "source_kind": report.source_kind,
        "download_dir": str(out_dir),
        "files": {
            split.name: {
                "path": str(split.path),
                "rows": split.rows_written,
                "rows_read": split.rows_read,
                "dropped": len(split.dropped),
                "sha256": split.sha256,
                "bytes": split.bytes,
            }
            for split in report.splits
        },
    }


def summary(outputs: dict[str, Any]) -> str:
    files = outputs.get("files") or {}
    return ", ".join(f"{name} {info.get('rows')}" for name, info in files.items())
