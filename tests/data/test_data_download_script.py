from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "download_dataset.py"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_script_on_jsonl_dir(tmp_path, write_jsonl_dir, make_chat):
    train = [make_chat(i) for i in range(1, 21)]
    train.insert(2, "not json")  # line 3
    src = write_jsonl_dir({"train_sft": train, "test_sft": [make_chat(i) for i in range(50, 54)]})
    out = tmp_path / "downloaded"
    proc = _run("--dataset", str(src), "--dataset_split_pc", "100", "--download_dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train_sft: 20 rows, 1 dropped" in proc.stdout
    assert "train_sft.jsonl:3: invalid JSON" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["test_sft.jsonl", "train_sft.jsonl"]
    rows = [json.loads(line) for line in (out / "train_sft.jsonl").read_text().splitlines()]
    assert rows == [make_chat(i) for i in range(1, 21)]


def test_script_defaults_to_five_percent(tmp_path, write_jsonl_dir, make_chat):
    src = write_jsonl_dir({"train_sft": [make_chat(i) for i in range(400)]})
    proc = _run("--dataset", str(src), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "ultrachat_200k_dataset" / "train_sft.jsonl"
    assert len(out.read_text().splitlines()) == 20


def test_script_bad_input(tmp_path):
    proc = _run("--dataset", str(tmp_path / "missing"), "--download_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert str(tmp_path / "missing") in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


def test_script_bad_split_pc(tmp_path):
    proc = _run("--dataset", "ftctl:ultrachat-sample", "--dataset_split_pc", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.split_pc" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_script_hub_offline(tmp_path):
    proc = _run("--download_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 1  # the network, not the input
    assert "unreachable" in proc.stderr and "ftctl:ultrachat-sample" in proc.stderr
    assert "Traceback" not in proc.stderr
