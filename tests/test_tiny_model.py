"""The shipped tiny Phi-3 chat model, and the determinism of its build (tools/build_tiny_model.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


def _load_tool(name: str):
    """A build tool from the repository's tools/ folder (not part of the installed package)."""
    path = Path(__file__).resolve().parents[1] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tiny = _load_tool("build_tiny_model")

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny.shipped_model_dir()))


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny.shipped_model_dir()))


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-builds")
    a, b = root / "a", root / "b"
    tiny.build(a, pretrain_steps=2)
    tiny.build(b, pretrain_steps=2)
    return a, b


def test_the_shipped_model_is_a_small_phi3(model):
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert model.config.model_type == "phi3"
    assert 500_000 <= model.num_parameters() <= 2_000_000
    size = sum(f.stat().st_size for f in tiny.shipped_model_dir().iterdir() if f.is_file())
    assert size < 8_000_000


def test_the_chat_template_renders_the_phi3_format(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    assert text == (
        "<|system|>\nYou are a helpful assistant.<|end|>\n"
        "<|user|>\nWhat is the capital of France?<|end|>\n"
        "<|assistant|>\nThe capital of France is Paris.<|end|>\n"
    )
    prompt = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWhat is the capital of France?<|end|>\n<|assistant|>\n")
    with pytest.raises(Exception, match="Unknown role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_special_tokens_are_single_tokens(tokenizer, model):
    for token in tiny.SPECIAL_TOKENS:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token
    end_id = tokenizer.convert_tokens_to_ids("<|end|>")
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    eos = model.generation_config.eos_token_id
    assert end_id in (eos if isinstance(eos, list) else [eos])


def test_the_model_answers_and_stops_at_end(tokenizer, model):
    import torch

    prompt = tokenizer.apply_chat_template(MESSAGES[1:2], tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=48, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    assert new[-1] == tokenizer.convert_tokens_to_ids("<|end|>")
    words = tokenizer.decode(new, skip_special_tokens=True).split()
    assert len(words) >= 2 and any(w.strip(".,!?").isalpha() for w in words)


def test_the_model_metadata_file(tmp_path):
    meta = json.loads((tiny.shipped_model_dir() / tiny.METADATA_FILE).read_text())
    assert meta == {
        "name": "ftctl/tiny-phi3-chat",
        "finetune_compute_allow_list": None,
        "inference_compute_allow_list": None,
        "model_specific_defaults": {"apply_deepspeed": "false"},
    }
    assert "python tools/build_tiny_model.py" in (tiny.shipped_model_dir() / "README.md").read_text()


def test_building_twice_gives_the_same_bytes(two_builds):
    a, b = two_builds
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", tiny.METADATA_FILE} <= set(names)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_the_shipped_tokenizer_matches_the_shipped_sample(two_builds):
    """Fails when the sample dataset changed: rebuild with `python tools/build_tiny_model.py`."""
    a, _ = two_builds
    for name in ("tokenizer.json", "tokenizer_config.json", tiny.METADATA_FILE):
        assert (a / name).read_bytes() == (tiny.shipped_model_dir() / name).read_bytes(), (
            f"{name} differs from a fresh build: the sample changed? run `python tools/build_tiny_model.py`"
        )
