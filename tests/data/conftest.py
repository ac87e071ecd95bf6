"""Fixtures for the data-layer tests: small datasets built in tmp_path."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep `datasets`' Arrow cache out of ~/.cache, and never try the network."""
    import datasets
    import huggingface_hub.constants

    cache = tmp_path_factory.mktemp("hf-datasets-cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def chat(i: int, **extra: Any) -> dict[str, Any]:
    """A valid ultrachat-style record, numbered."""
    prompt = f"Question number {i}: what is {i} + {i}?"
    return {
        "prompt": prompt,
        "prompt_id": f"{i:064x}",
        "messages": [
            {"content": prompt, "role": "user"},
            {"content": f"{i} + {i} = {2 * i}.", "role": "assistant"},
        ],
        **extra,
    }


@pytest.fixture
def make_chat() -> Callable[..., dict[str, Any]]:
    return chat


@pytest.fixture
def write_jsonl_dir(tmp_path: Path) -> Callable[[dict[str, list[Any]]], Path]:
    """Write {split: [record or raw line str]} as <split>.jsonl files; str items are written verbatim."""

    def write(splits: dict[str, list[Any]], name: str = "jsonl_src") -> Path:
        root = tmp_path / name
        root.mkdir()
        for split, rows in splits.items():
            lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
            (root / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return root

    return write


@pytest.fixture
def write_hub_layout(tmp_path: Path) -> Callable[[dict[str, list[dict[str, Any]]]], Path]:
    """Write {split: [record]} as data/<split>-00000-of-00001.parquet (no dataset card), via pyarrow."""

    def write(splits: dict[str, list[dict[str, Any]]], name: str = "hub_src") -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        message = pa.struct([("content", pa.string()), ("role", pa.string())])
        schema = pa.schema(
            [("prompt", pa.string()), ("prompt_id", pa.string()), ("messages", pa.list_(message))]
        )
        root = tmp_path / name
        (root / "data").mkdir(parents=True)
        for split, rows in splits.items():
            table = pa.Table.from_pylist(rows, schema=schema)
            pq.write_table(table, root / "data" / f"{split}-00000-of-00001.parquet")
        return root

    return write
