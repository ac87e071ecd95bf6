from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.data import sample
from ftctl.data.sources import sample_dataset_dir
from ftctl.data.ultrachat import check_record

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load_tool(name: str):
    """A build tool from the repository's tools/ folder (not part of the installed package)."""
    path = TOOLS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


build = _load_tool("build_sample_dataset")
SHIPPED = sample.default_output_dir()
EXPECTED_SIZES = {"train_sft": 400, "test_sft": 60, "train_gen": 400, "test_gen": 60}


def _files() -> list[Path]:
    """The sample's files, relative to its folder."""
    return [Path("README.md")] + [sample.split_file(Path("."), split) for split in sample.SPLITS]


def _rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_shipped_sample_exists_and_is_small():
    assert sample_dataset_dir() == SHIPPED
    total = 0
    for rel in _files():
        assert (SHIPPED / rel).is_file(), rel
        total += (SHIPPED / rel).stat().st_size
    assert total < 500_000


def test_regenerating_matches_shipped_bytes(tmp_path):
    import pyarrow
    import pyarrow.parquet as pq

    build.write_sample(tmp_path)
    assert (tmp_path / "README.md").read_bytes() == (SHIPPED / "README.md").read_bytes()
    for split in sample.SPLITS:
        new, shipped = sample.split_file(tmp_path, split), sample.split_file(SHIPPED, split)
        if new.read_bytes() == shipped.read_bytes():
            continue
        # Parquet bytes depend on the pyarrow version that wrote them: a different pyarrow may encode
        # the same rows differently. The rows must still be identical; with the same pyarrow, the bytes.
        created_by = pq.ParquetFile(shipped).metadata.created_by
        assert f"version {pyarrow.__version__}" not in created_by, f"{split}: bytes differ from shipped"
        assert _rows(new) == _rows(shipped), split


def test_generation_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build.write_sample(a)
    build.write_sample(b)
    for rel in _files():
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_module_entry_point(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(TOOLS / "build_sample_dataset.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for rel in _files():
        assert (out / rel).is_file(), rel
    assert (out / "README.md").read_bytes() == (SHIPPED / "README.md").read_bytes()
    assert "wrote" in proc.stdout


def test_loads_through_datasets_with_four_splits():
    import datasets

    ds = datasets.load_dataset(str(SHIPPED))
    assert list(ds) == list(EXPECTED_SIZES)
    assert {name: len(split) for name, split in ds.items()} == EXPECTED_SIZES
    assert set(ds["train_sft"].column_names) == {"prompt", "prompt_id", "messages"}
    assert datasets.get_dataset_split_names(str(SHIPPED)) == list(EXPECTED_SIZES)


def test_records_are_valid_and_varied():
    prompts: set[str] = set()
    for split, size in EXPECTED_SIZES.items():
        records = list(sample.iter_sample_conversations(split))
        assert len(records) == size
        multi = system = 0
        for record in records:
            assert check_record(record) is None, record
            assert record["prompt_id"] == hashlib.sha256(record["prompt"].encode("utf-8")).hexdigest()
            messages = record["messages"]
            first_user = next(m for m in messages if m["role"] == "user")
            assert first_user["content"] == record["prompt"]
            roles = [m["role"] for m in messages if m["role"] != "system"]
            assert roles == ["user", "assistant"] * (len(roles) // 2)
            assert all(m["role"] != "system" for m in messages[1:])
            multi += len(roles) > 2
            system += messages[0]["role"] == "system"
            assert record["prompt"] not in prompts, "prompts are unique across splits"
            prompts.add(record["prompt"])
        if size >= 400:
            assert 0.15 < multi / size < 0.35
            assert 0.05 < system / size < 0.3


def test_some_answers_are_right():
    # Spot-check the computed families: every "a + b = c." answer must add up.
    import re

    pattern = re.compile(r"^(\d+) \+ (\d+) = (\d+)\.$")
    checked = 0
    for record in sample.iter_sample_conversations("train_sft"):
        for message in record["messages"]:
            match = pattern.match(message["content"])
            if match:
                a, b, c = map(int, match.groups())
                assert a + b == c
                checked += 1
    assert checked > 0


def test_iter_sample_unknown_split():
    with pytest.raises(FileNotFoundError, match="train"):
        next(sample.iter_sample_conversations("validation"))
