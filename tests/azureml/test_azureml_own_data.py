"""The user's own data on Azure ML (the fake service): prepare-data converts and divides the file on this
machine, and what submit uploads are the converted splits; weight 0 is refused, naming file:line, since
the chat-completion component trains on every assistant reply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")


def _sharegpt(path: Path, count: int) -> Path:
    records = [
        {
            "conversations": [
                {"from": "human", "value": f"What is {i} + {i}?"},
                {"from": "gpt", "value": f"{2 * i}."},
            ]
        }
        for i in range(count)
    ]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _use(az, dataset: Path) -> None:
    az.settings[:] = [s for s in az.settings if not s.startswith("data.dataset=")] + [
        f"data.dataset={dataset}"
    ]


def test_the_converted_splits_are_what_submit_uploads(az, tmp_path: Path) -> None:
    _use(az, _sharegpt(tmp_path / "mine.json", 50))
    result = az("run", "--to", "submit")
    assert (
        "mine.json: 50 records, 0 dropped: train_sft 45, test_sft 5 (10% held out, seed 0)" in result.stderr
    )
    assert "format: ShareGPT (conversations), detected at" in result.stderr
    files = az.outputs("prepare-data")["files"]
    assert set(files) == {"train_sft", "test_sft"}
    uploads = [
        r.path.rsplit("/", 1)[1]
        for r in az.service.requests
        if r.method == "PUT" and r.host.endswith(".blob.core.windows.net") and "comp" not in r.query
    ]
    assert sorted(uploads) == ["test_sft.jsonl", "train_sft.jsonl"]
    stored = {key.rsplit("/", 1)[1]: data for key, data in az.service.blobs.items() if key.endswith(".jsonl")}
    for split, info in files.items():
        local = Path(info["path"]).read_bytes()
        assert stored[f"{split}.jsonl"] == local
        first = json.loads(local.splitlines()[0])
        assert list(first) == ["messages"]
        assert [(m["role"], m["content"].endswith(("?", "."))) for m in first["messages"]] == [
            ("user", True),
            ("assistant", True),
        ]


def test_weight_0_is_refused_naming_the_line(az, tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(20)
    ]
    rows[6]["messages"][1]["weight"] = 0
    rows[6]["messages"] += [{"role": "user", "content": "again"}, {"role": "assistant", "content": "yes"}]
    src = tmp_path / "weighted.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _use(az, src)
    refused = az("run", "--to", "prepare-data", code=2)
    assert (
        f"{src}:7: an assistant message has weight 0, and this backend trains on every assistant reply"
        in (refused.stderr)
    )
    assert "honours weight 0" in refused.stderr
    assert az.record("prepare-data")["status"] == "failed"
    assert not list(az.workspace.rglob("train_sft.jsonl"))  # nothing written
