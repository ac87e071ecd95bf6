"""The digest that lets deploy reuse the trainer's chat-template check: it changes with anything the check
reads, and reads no weights and no file too large to be a tokenizer's."""

from __future__ import annotations

import shutil
from pathlib import Path

from ftctl.backends.local.evaluate import TEMPLATE_KEY_MAX_FILE_BYTES, template_key
from ftctl.models.layout import shipped_model_dir

CONVERSATIONS = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]]


def _model(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(shipped_model_dir(), folder)
    return folder


def test_the_key_follows_the_tokenizer_files_and_the_conversations(tmp_path: Path) -> None:
    base, served = _model(tmp_path, "base"), _model(tmp_path, "served")
    key = template_key(base, served, CONVERSATIONS)
    assert key == template_key(base, _model(tmp_path, "copy"), CONVERSATIONS)  # paths do not count
    assert key != template_key(base, served, [[*CONVERSATIONS[0], {"role": "user", "content": "More"}]])
    config = served / "tokenizer_config.json"
    config.write_text(config.read_text().replace("}", ', "model_max_length": 7}', 1))
    assert key != template_key(base, served, CONVERSATIONS)


def test_weights_and_huge_files_are_not_read(tmp_path: Path) -> None:
    base, served = _model(tmp_path, "base"), _model(tmp_path, "served")
    huge = served / "model.onnx"
    with huge.open("wb") as out:  # sparse: no disk used
        out.truncate(TEMPLATE_KEY_MAX_FILE_BYTES + 1)
    key = template_key(base, served, CONVERSATIONS)
    with huge.open("r+b") as out:
        out.write(b"x")  # the same size, other bytes: not read
    (served / "model.safetensors").write_bytes(b"other weights")
    assert template_key(base, served, CONVERSATIONS) == key
