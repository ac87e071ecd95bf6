"""The sample chat dataset shipped with ftctl (src/ftctl/resources/ultrachat_sample): where it is and
how to read it.

A small, deterministic stand-in for HuggingFaceH4/ultrachat_200k (which cannot be fetched offline), in
the same format and hub layout: ``data/<split>-00000-of-00001.parquet`` plus a README.md dataset card.
Records are ``{"prompt": str, "prompt_id": sha256(prompt) hex, "messages": [{"content", "role"}, ...]}``.

It is built by ``python tools/build_sample_dataset.py [OUT_DIR]`` (not part of the installed package).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

SPLITS: dict[str, int] = {"train_sft": 400, "test_sft": 60, "train_gen": 400, "test_gen": 60}


def default_output_dir() -> Path:
    """The shipped sample: src/ftctl/resources/ultrachat_sample."""
    return Path(__file__).resolve().parent.parent / "resources" / "ultrachat_sample"


def split_file(root: Path, split: str) -> Path:
    return Path(root) / "data" / f"{split}-00000-of-00001.parquet"


def iter_sample_conversations(split: str = "train_sft", root: Path | str | None = None) -> Iterator[dict]:
    """Yield the shipped sample's records of one split, as plain dicts."""
    import pyarrow.parquet as pq

    path = split_file(Path(root) if root is not None else default_output_dir(), split)
    if not path.is_file():
        raise FileNotFoundError(
            f"no sample split {split!r}: {path} does not exist (splits: {', '.join(SPLITS)})"
        )
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=256):
        yield from batch.to_pylist()
