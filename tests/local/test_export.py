"""`ftctl export` (issue 20): every format of the registered tiny model passes the fidelity check, read back
by transformers (and its GGUF loader); deliberately broken exports fail it, naming what differs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ftctl import export as ex
from ftctl.export.check import check
from harness import Ftctl

EXPECTED_FILES = {
    "merged": {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    },
    "adapter": {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "generation_config.json",
    },
    "gguf": {"model.gguf"},
    "ollama": {"model.gguf", "Modelfile"},
}


@pytest.mark.parametrize("fmt", ["merged", "adapter", "gguf", "ollama"])
def test_each_format_passes_the_fidelity_check(trained_ws: Ftctl, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    result = trained_ws("export", str(out), "--format", fmt)
    report = json.loads((out / ex.REPORT).read_text())
    assert EXPECTED_FILES[fmt] <= {p.name for p in out.iterdir()}
    figures = report["check"]
    assert figures["ok"] and figures["problems"] == []
    assert (
        figures["prompts"] == 8
        and figures["top1_agreement"].split("/")[0] == figures["top1_agreement"].split("/")[1]
    )
    assert figures["logits_max_abs_diff"] <= figures["tolerance"]
    assert figures["template_token_ids_equal"] == "16/16" and figures["text_token_ids_equal"] == "3/3"
    assert figures["greedy_replies_end_turn"] == figures["fine_tuned_replies_end_turn"] == "8/8"
    assert figures["stop_tokens"]  # the end-of-turn token is declared
    registered = trained_ws.outputs("register")
    assert report["registered"] == f"{registered['model_name']} v{registered['version']}"
    assert f"as {fmt} to {out}" in result.stdout
    assert not list(tmp_path.glob(".out.export-*"))  # no temporary folder left
    if fmt == "merged":
        config = json.loads((out / "generation_config.json").read_text())
        assert 4 in config["eos_token_id"]  # <|end|>, the end-of-turn token of the tiny model
    if fmt == "ollama":
        modelfile = (out / "Modelfile").read_text()
        assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|end|>"' in modelfile


def _source(trained_ws: Ftctl) -> ex.Source:
    job_dir = Path(trained_ws.outputs("submit")["job_dir"])
    spec = json.loads((job_dir / "spec.json").read_text())
    held = Path(trained_ws.outputs("prepare-data")["files"]["test_sft"]["path"])
    return ex.Source(
        job_id=job_dir.name,
        job_dir=job_dir,
        hf_dir=job_dir / "outputs" / "hf_model",
        adapter_dir=job_dir / "outputs" / "adapter",
        base_dir=Path(spec["model_path"]),
        registered=None,
        held_out=held,
    )


def _merged(trained_ws: Ftctl, out: Path) -> ex.Source:
    src = _source(trained_ws)
    out.mkdir()
    ex.write_merged(src, out)
    assert check(src, "merged", out)["ok"]  # as written, it passes
    return src


def test_a_wrong_chat_template_fails_the_check(trained_ws: Ftctl, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    src = _merged(trained_ws, out)
    template = (out / "chat_template.jinja").read_text()
    (out / "chat_template.jinja").write_text(template.replace("<|end|>", ""))  # no end-of-turn token
    figures = check(src, "merged", out)
    assert not figures["ok"]
    assert any("chat template renders other token ids" in p for p in figures["problems"]), figures


def test_a_dropped_tensor_fails_the_check(trained_ws: Ftctl, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    out = tmp_path / "merged"
    src = _merged(trained_ws, out)
    weights = load_file(str(out / "model.safetensors"))
    dropped = next(name for name in weights if "layers.1.self_attn.o_proj" in name)
    del weights[dropped]
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    figures = check(src, "merged", out)
    assert not figures["ok"]
    assert any("next-token logits differ" in p for p in figures["problems"]), figures


def test_stop_tokens_missing_from_the_generation_config_fail_the_check(
    trained_ws: Ftctl, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    src = _merged(trained_ws, out)
    config = json.loads((out / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": [2]}))  # <|user|>
    figures = check(src, "merged", out)
    assert any("greedy replies end their turn" in p for p in figures["problems"]), figures


def test_a_gguf_without_a_tensor_fails_the_check(trained_ws: Ftctl, tmp_path: Path, monkeypatch: Any) -> None:
    from ftctl.export import gguf as gguf_export

    original = gguf_export._tensors
    monkeypatch.setattr(
        gguf_export, "_tensors", lambda *a: [(n, d) for n, d in original(*a) if n != "blk.0.ffn_down.weight"]
    )
    out = tmp_path / "gguf"
    result = trained_ws("export", str(out), "--format", "gguf", code=1)
    assert "differs from the fine-tuned model" in result.stderr
    assert not json.loads((out / ex.REPORT).read_text())["check"]["ok"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "onnx"], "--format must be one of merged, adapter, gguf, ollama"),
        (["--job", "job-nope"], "no job 'job-nope'"),
        (["--job", "../x"], "no job '../x'"),
    ],
)
def test_bad_export_arguments_are_exit_2(
    trained_ws: Ftctl, tmp_path: Path, args: list[str], message: str
) -> None:
    result = trained_ws("export", str(tmp_path / "out"), *args, code=2)
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_export_never_writes_into_a_folder_with_files(trained_ws: Ftctl, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = trained_ws("export", str(tmp_path / "out"), code=2)
    assert "exists and is not an empty folder" in result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


# SmolLM2-135M-Instruct's chat template (ChatML with a default system turn), as ftctl's conversion has it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_chatml_translates_to_an_ollama_template_and_another_wording_is_refused() -> None:
    from ftctl.errors import UsageError
    from ftctl.export.gguf import _ollama_template

    template = _ollama_template(SMOLLM2_TEMPLATE)
    assert template == (
        '{{- range $i, $m := .Messages }}{{- if and (eq $i 0) (ne $m.Role "system") }}<|im_start|>system\n'
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n{{ end }}"
        "<|im_start|>{{ $m.Role }}\n{{ $m.Content }}<|im_end|>\n{{ end }}"
        "{{- if .Messages }}<|im_start|>assistant\n{{ end }}"
    )
    without_system = (
        SMOLLM2_TEMPLATE.split("{% if loop.first")[0] + SMOLLM2_TEMPLATE.split("{% endif %}", 1)[1]
    )
    assert "system" not in _ollama_template(without_system)
    for changed in (
        SMOLLM2_TEMPLATE.replace("+ '<|im_end|>' + '\n'", "+ '<|im_end|>'"),  # no newline after a turn
        SMOLLM2_TEMPLATE.replace("message['content']", "message['content'] | trim"),
    ):
        with pytest.raises(UsageError, match="no Go-template translation"):
            _ollama_template(changed)


@pytest.mark.parametrize(
    ("tokenizer", "named"),
    [
        (  # upstream SmolLM2: digits one by one, then the byte-level split (llama.cpp's `smollm`)
            {
                "pre_tokenizer": {
                    "type": "Sequence",
                    "pretokenizers": [
                        {"type": "Digits", "individual_digits": True},
                        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                    ],
                }
            },
            "Digits(individual_digits=True) + ByteLevel(add_prefix_space=False, use_regex=True)",
        ),
        ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, "add_prefix_space=True"),
        (
            {"normalizer": {"type": "NFC"}, "pre_tokenizer": {"type": "ByteLevel", "use_regex": True}},
            "normalizer NFC",
        ),
    ],
)
def test_a_pre_tokenization_gguf_cannot_declare_is_exit_2(tokenizer: dict[str, Any], named: str) -> None:
    from ftctl.errors import UsageError
    from ftctl.export.gguf import _pre_tokenizer

    assert _pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}}) == "gpt2"
    with pytest.raises(UsageError, match="no exact llama.cpp equivalent") as raised:
        _pre_tokenizer(tokenizer)
    assert named in str(raised.value)
