"""A GGUF file (and an Ollama Modelfile) from a merged Hugging Face folder, with the `gguf` package.

For the architectures ftctl trains: Phi-3 (`phi3`: fused qkv and gate_up projections, as llama.cpp names
them) and the Llama family (`llama`: the query and key rows permuted as llama.cpp's converter does, so
rotary embeddings pair the same dimensions). Tensors are float32 (no quantization: the export is checked
against the fine-tuned model to 1e-3). The tokenizer is the byte-level BPE of tokenizer.json (llama.cpp's
`gpt2` model: tokens in id order, their types, the merges) with the special ids and the chat template.
Its pre-tokenization is declared as llama.cpp's `gpt2` (the GPT-2 split, which is what a plain ByteLevel
pre-tokenizer with its regex does, and what transformers' GGUF loader builds back); any other
pre-tokenizer or a normalizer is exit 2 naming it, since neither llama.cpp's `tokenizer.ggml.pre` names
nor transformers' loader would reproduce it for sure (e.g. upstream SmolLM2's individual digits, llama.cpp's
`smollm`, which transformers' loader reads as plain ByteLevel).
Tensor names come from gguf's own name map for the architecture (what llama.cpp and transformers' GGUF
loader read).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ftctl.errors import UsageError

ARCHITECTURES = {"phi3": "phi3", "llama": "llama"}  # HF model_type -> llama.cpp architecture
NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # llama.cpp token types


def _load(hf_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    try:
        tokenizer = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{hf_dir} has no tokenizer.json: GGUF export needs a fast tokenizer") from None
    tok_config = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = hf_dir / "chat_template.jinja"
    if template.is_file():
        tok_config["chat_template"] = template.read_text(encoding="utf-8")
    generation = {}
    if (hf_dir / "generation_config.json").is_file():
        generation = json.loads((hf_dir / "generation_config.json").read_text(encoding="utf-8"))
    return config, tokenizer, tok_config, generation


def _vocabulary(tokenizer: dict[str, Any], size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens in id order, their llama.cpp types, merges "a b") of a byte-level BPE tokenizer.json."""
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UsageError(
            f"GGUF export supports byte-level BPE tokenizers; this one is {model.get('type')} "
            f"(byte_fallback {model.get('byte_fallback')})"
        )
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [USER_DEFINED] * size
    for token, index in (model.get("vocab") or {}).items():
        if 0 <= index < size:
            tokens[index], types[index] = token, NORMAL
    for added in tokenizer.get("added_tokens") or []:
        if 0 <= added["id"] < size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return tokens, types, merges


def _pre_tokenizer(tokenizer: dict[str, Any]) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for tokenizer.json's pre-tokenization; UsageError where ftctl has
    no exact equivalent (llama.cpp and transformers' GGUF loader would split text otherwise)."""
    pre = tokenizer.get("pre_tokenizer") or {}
    normalizer = tokenizer.get("normalizer")
    plain = pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
    if plain and not normalizer:
        return "gpt2"
    what = f"normalizer {normalizer.get('type')}" if normalizer else f"pre-tokenizer {_describe(pre)}"
    raise UsageError(
        f"GGUF export: the tokenizer's {what} has no exact llama.cpp equivalent that transformers' GGUF "
        "loader reads back (ftctl writes byte-level BPE with the GPT-2 split only)",
        hint="export --format merged (or adapter)",
    )


def _describe(pre: dict[str, Any]) -> str:
    if pre.get("type") == "Sequence":
        return " + ".join(_describe(p) for p in pre.get("pretokenizers") or [])
    options = {k: v for k, v in pre.items() if k != "type" and isinstance(v, (bool, int, str))}
    return f"{pre.get('type')}({', '.join(f'{k}={v}' for k, v in options.items())})"


def _permute(weight: Any, heads: int, kv_heads: int) -> Any:
    """llama.cpp's row order for a Llama query/key projection (rotary pairs made adjacent)."""
    if kv_heads != heads:
        heads = kv_heads
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _tensors(hf_dir: Path, arch: Any, config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(GGUF name, float32 numpy array) for every weight of the model, in llama.cpp's names."""
    import numpy as np
    from gguf import get_tensor_name_map
    from safetensors.numpy import load_file

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise UsageError(f"{hf_dir} has no safetensors weights")
    names = get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    found = []
    for file in files:
        for hf_name, array in load_file(str(file)).items():
            base, _, suffix = hf_name.rpartition(".")
            gguf_name = names.get_name(base)
            if gguf_name is None:
                if "rotary_emb" in hf_name:
                    continue
                raise UsageError(f"GGUF export: no llama.cpp name for tensor {hf_name}")
            data = array.astype(np.float32)
            if config["model_type"] == "llama" and base.endswith(("q_proj", "k_proj")):
                data = _permute(data, heads, heads if base.endswith("q_proj") else kv_heads)
            found.append((f"{gguf_name}.{suffix}", data))
    if config.get("tie_word_embeddings"):
        found = [(name, data) for name, data in found if name != "output.weight"]
    return found


def _text(token: Any) -> str:
    """A special token of tokenizer_config.json: a string, or an AddedToken's {"content": ...}."""
    return str(token.get("content") if isinstance(token, dict) else token)


def write_gguf(hf_dir: Path, path: Path, stop_ids: list[int]) -> None:
    """Write `path`, a float32 GGUF of the merged model in `hf_dir`."""
    from gguf import MODEL_ARCH_NAMES, GGUFWriter, LlamaFileType

    config, tokenizer, tok_config, _ = _load(hf_dir)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UsageError(
            f"GGUF export supports {', '.join(ARCHITECTURES)} models; this one is {model_type}",
            hint="export --format merged (or adapter)",
        )
    pre = _pre_tokenizer(tokenizer)
    arch_name = ARCHITECTURES[model_type]
    arch = next(key for key, value in MODEL_ARCH_NAMES.items() if value == arch_name)
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    rope = config.get("rope_parameters") or {}
    writer = GGUFWriter(str(path), arch_name)
    writer.add_name(str(config.get("_name_or_path") or hf_dir.name))
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-5))
    writer.add_rope_freq_base(float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0))
    writer.add_rope_dimension_count(int(head_dim * float(rope.get("partial_rotary_factor") or 1.0)))
    writer.add_file_type(LlamaFileType.ALL_F32)
    size = int(config["vocab_size"])
    tokens, types, merges = _vocabulary(tokenizer, size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {t: i for i, t in enumerate(tokens)}
    special = {key: _text(tok_config.get(key)) for key in ("bos_token", "pad_token", "eos_token")}
    for key, add in (("bos_token", writer.add_bos_token_id), ("pad_token", writer.add_pad_token_id)):
        if special[key] in ids:
            add(ids[special[key]])
    eos = ids.get(special["eos_token"])
    if eos is not None:
        writer.add_eos_token_id(eos)
    end_of_turn = [i for i in stop_ids if i != eos]
    if end_of_turn:
        writer.add_eot_token_id(end_of_turn[0])
    writer.add_add_bos_token(False)
    if tok_config.get("chat_template"):
        writer.add_chat_template(tok_config["chat_template"])
    for name, data in _tensors(hf_dir, arch, config):
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def modelfile(hf_dir: Path, gguf_name: str, stop_ids: list[int]) -> str:
    """An Ollama Modelfile: the GGUF, the chat template in Go template syntax and the stop tokens."""
    _, tokenizer, tok_config, _ = _load(hf_dir)
    tokens, _, _ = _vocabulary(
        tokenizer, max([a["id"] for a in tokenizer.get("added_tokens") or []] + [0]) + 1
    )
    vocab = {**(tokenizer.get("model") or {}).get("vocab", {}), **{t: i for i, t in enumerate(tokens)}}
    names = {index: token for token, index in vocab.items()}
    stops = [names[i] for i in stop_ids if i in names]
    template = _ollama_template(str(tok_config.get("chat_template") or ""))
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


# The ChatML template (SmolLM2's), as its Jinja is spelled with newlines escaped: an optional default system
# turn when the conversation has none, each message as <|im_start|>role\ncontent<|im_end|>\n, then the
# assistant's turn. Matched whole, so any other wording is refused rather than half-translated.
_CHATML = re.compile(
    r"\{% for message in messages %\}"
    r"(?:\{% if loop\.first and messages\[0\]\['role'\] != 'system' %\}"
    r"\{\{ '<\|im_start\|>system\\n(?P<system>[^'{}\\]*)<\|im_end\|>\\n' \}\}\{% endif %\})?"
    r"\{\{ ?'<\|im_start\|>' \+ message\['role'\] \+ '\\n' \+ message\['content'\]"
    r" \+ '<\|im_end\|>' \+ '\\n' ?\}\}"
    r"\{% endfor %\}\{% if add_generation_prompt %\}\{\{ '<\|im_start\|>assistant\\n' \}\}\{% endif %\}"
    r"(?:\\n)*"
)


def _ollama_template(jinja: str) -> str:
    """The chat template as an Ollama (Go) template, for the two template shapes of the models ftctl trains:
    Phi-3's role tags ('<|role|>\\n' + content + '<|end|>\\n', then '<|assistant|>\\n') and ChatML
    (SmolLM2's, with its default system turn); UsageError for another."""
    spelled = jinja.replace("\n", "\\n")  # a newline in the template's strings, or its escape
    if "'<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n'" in spelled:
        return (
            "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}"
            "{{- if .Messages }}<|assistant|>\n{{ end }}"
        )
    chatml = _CHATML.fullmatch(spelled.strip())
    if chatml is None:
        raise UsageError(
            "Ollama export: this chat template has no Go-template translation in ftctl (it translates "
            "Phi-3's role tags and ChatML)",
            hint="export --format gguf (the Jinja template is in the file); write the Modelfile's TEMPLATE",
        )
    system = chatml["system"]
    default_system = (
        '{{- if and (eq $i 0) (ne $m.Role "system") }}'
        f"<|im_start|>system\n{system.replace(chr(92) + 'n', chr(10))}<|im_end|>\n{{{{ end }}}}"
        if system is not None
        else ""
    )
    return (
        "{{- range $i, $m := .Messages }}" + default_system + "<|im_start|>{{ $m.Role }}\n"
        "{{ $m.Content }}<|im_end|>\n{{ end }}{{- if .Messages }}<|im_start|>assistant\n{{ end }}"
    )
