"""The built-in tiny Phi-3 chat model (about 1M parameters) that the local backend fine-tunes offline.

It is a real `Phi3ForCausalLM` with a byte-level BPE tokenizer trained on ftctl's own sample dataset,
the Phi-3 chat template and special tokens, and a short full-parameter "pre-training" on the sample's
train_gen conversations so that it writes word-like English instead of noise. train_sft, which the
quickstart fine-tunes on, is left out of the pre-training, so fine-tuning visibly lowers its loss. It is not a
useful assistant; it exists so the whole pipeline (fine-tune, evaluate, register, deploy, score) runs in
seconds on a laptop CPU.

The build is deterministic: fixed seeds, one CPU thread, deterministic torch algorithms, inputs in a
fixed order, so rebuilding on the same machine and library versions gives the same bytes.

Regenerate the shipped copy (src/ftctl/resources/tiny-phi3) with `python tools/build_tiny_model.py`.
A build-time tool, not part of the installed package (ftctl.models.layout.shipped_model_dir says where
the shipped copy is); it imports the ftctl of this checkout. Heavy imports (torch, transformers,
tokenizers) happen inside functions only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # this checkout's ftctl, installed or not

from ftctl.data.sample import iter_sample_conversations  # noqa: E402
from ftctl.models.layout import shipped_model_dir  # noqa: E402

MODEL_NAME = "ftctl/tiny-phi3-chat"
SEED = 1234
VOCAB_SIZE = 3072
DEFAULT_PRETRAIN_STEPS = 260
BLOCK_SIZE = 128
BATCH_SIZE = 16
PRETRAIN_LR = 3e-3

EOS = "<|endoftext|>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [EOS, SYSTEM, USER, ASSISTANT, END]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role'] + ' (expected system, user or assistant)') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "original_max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}

MODEL_METADATA = {
    "name": MODEL_NAME,
    "finetune_compute_allow_list": None,
    "inference_compute_allow_list": None,
    "model_specific_defaults": {"apply_deepspeed": "false"},
}
METADATA_FILE = "ftctl_model.json"

MODEL_CARD = """\
---
license: mit
library_name: transformers
pipeline_tag: text-generation
tags:
- phi3
- tiny
- ftctl
---

# {name}

A tiny (about {params_k}k parameters) `Phi3ForCausalLM` chat model that ships with ftctl, so the
fine-tuning pipeline runs offline on a CPU in seconds. It is a smoke-test model, not an assistant:
its replies are word-like English with little meaning.

- Architecture: Phi-3 ({layers} layers, hidden size {hidden}, {heads} attention heads, MLP size
  {intermediate}, tied input/output embeddings), context of {ctx} tokens.
- Tokenizer: byte-level BPE, {vocab} tokens, trained with the `tokenizers` library on ftctl's sample
  dataset; special tokens `<|endoftext|>` (eos, pad, unk), `<|system|>`, `<|user|>`,
  `<|assistant|>`, `<|end|>`.
- Chat template: Phi-3's (`<|user|>\\n...<|end|>\\n<|assistant|>\\n`); generation stops at `<|end|>`.
- Weights: random initialisation (seed {seed}), then {steps} steps of full-parameter training on the
  sample's train_gen conversations (not train_sft, which the quickstart fine-tunes on) rendered with
  the chat template
  ({block} tokens a sequence, batch {batch}, AdamW, peak learning rate {lr}).
- `{metadata}` carries what the Azure ML notebook reads from model tags (name, compute allow lists,
  model_specific_defaults).

Regenerate it with `python tools/build_tiny_model.py [OUT_DIR] [--pretrain-steps N]` in the ftctl
repository (deterministic: the same bytes on the same machine and library versions).
"""


def _quiet_progress_bars() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def _corpus(splits: tuple[str, ...] = ("train_sft", "train_gen")) -> list[list[dict[str, str]]]:
    """The sample's conversations of `splits`, in file order."""
    conversations = []
    for split in splits:
        for record in iter_sample_conversations(split):
            conversations.append([{"role": m["role"], "content": m["content"]} for m in record["messages"]])
    return conversations


def build_tokenizer(texts: list[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE tokenizer (transformers fast tokenizer) with the Phi-3 special tokens/template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT, END],
        model_max_length=ARCHITECTURE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _render(tokenizer: Any, conversation: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(conversation, tokenize=False)


def _pretrain(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], steps: int, log: Any
) -> None:
    """Next-token training on the rendered conversations, packed into fixed-size blocks."""
    import torch

    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    stream: list[int] = []
    for conv in conversations:
        stream += tokenizer(_render(tokenizer, conv), add_special_tokens=False)["input_ids"] + [eos_id]
    n_blocks = len(stream) // BLOCK_SIZE
    data = torch.tensor(stream[: n_blocks * BLOCK_SIZE], dtype=torch.long).view(n_blocks, BLOCK_SIZE)
    gen = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, min(30, steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    model.train()
    order = torch.randperm(n_blocks, generator=gen)
    cursor = 0
    started = time.perf_counter()
    for step in range(steps):
        if cursor + BATCH_SIZE > n_blocks:
            order = torch.randperm(n_blocks, generator=gen)
            cursor = 0
        batch = data[order[cursor : cursor + BATCH_SIZE]]
        cursor += BATCH_SIZE
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if log and (step % 50 == 0 or step == steps - 1):
            log(
                f"pretrain step {step + 1}/{steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - started:.0f}s)"
            )
    model.eval()


def _portable_tokenizer_config(out_dir: Path) -> None:
    """Rewrite tokenizer_config.json in a form transformers 4.x and 5.x both load.

    transformers 5 writes tokenizer_class "TokenizersBackend", "extra_special_tokens" and a separate
    chat_template.jinja; 4.x knows "PreTrainedTokenizerFast", "additional_special_tokens" and an inline
    "chat_template", which 5.x reads as well.
    """
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.pop("backend", None)
    cfg.pop("extra_special_tokens", None)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["additional_special_tokens"] = [SYSTEM, USER, ASSISTANT, END]
    cfg["chat_template"] = CHAT_TEMPLATE
    jinja = out_dir / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """One CPU thread, deterministic torch algorithms, no tokenizer parallelism; restored afterwards."""
    import torch

    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _build_model(tokenizer: Any, pretrain_steps: int, log: Any) -> Any:
    """A seeded Phi3ForCausalLM for `tokenizer`, pre-trained on train_gen for `pretrain_steps` steps."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    end_id = tokenizer.convert_tokens_to_ids(END)
    torch.manual_seed(SEED)
    config = Phi3Config(
        vocab_size=len(tokenizer),
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        **ARCHITECTURE,
    )
    model = Phi3ForCausalLM(config)
    if pretrain_steps > 0:
        _pretrain(model, tokenizer, _corpus(("train_gen",)), pretrain_steps, log)
    model.generation_config = GenerationConfig(
        bos_token_id=eos_id, eos_token_id=[end_id, eos_id], pad_token_id=eos_id, do_sample=False
    )
    return model


def _model_card(model: Any, tokenizer: Any, pretrain_steps: int) -> str:
    return MODEL_CARD.format(
        name=MODEL_NAME,
        params_k=round(sum(p.numel() for p in model.parameters()) / 1000),
        layers=ARCHITECTURE["num_hidden_layers"],
        hidden=ARCHITECTURE["hidden_size"],
        heads=ARCHITECTURE["num_attention_heads"],
        intermediate=ARCHITECTURE["intermediate_size"],
        ctx=ARCHITECTURE["max_position_embeddings"],
        vocab=len(tokenizer),
        seed=SEED,
        steps=pretrain_steps,
        block=BLOCK_SIZE,
        batch=BATCH_SIZE,
        lr=PRETRAIN_LR,
        metadata=METADATA_FILE,
    )


def build(out_dir: Path, *, pretrain_steps: int = DEFAULT_PRETRAIN_STEPS, log: Any = None) -> None:
    """Build the tiny model into out_dir (created if needed; files there are overwritten)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _deterministic():
        _quiet_progress_bars()
        texts = [m["content"] for conv in _corpus() for m in conv]  # the tokenizer sees both splits
        tokenizer = build_tokenizer(texts)
        model = _build_model(tokenizer, pretrain_steps, log)
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        _portable_tokenizer_config(out_dir)

    for f in out_dir.iterdir():  # save_pretrained may create files readable by the owner only
        if f.is_file():
            f.chmod(0o644)
    (out_dir / METADATA_FILE).write_text(json.dumps(MODEL_METADATA, indent=2) + "\n", encoding="utf-8")
    card = _model_card(model, tokenizer, pretrain_steps)
    (out_dir / "README.md").write_text(card, encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/build_tiny_model.py", description="Build ftctl's tiny Phi-3 chat model."
    )
    parser.add_argument(
        "out_dir", nargs="?", default=None, help=f"output folder (default: {shipped_model_dir()})"
    )
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=DEFAULT_PRETRAIN_STEPS,
        help=f"full-parameter training steps on the sample (default {DEFAULT_PRETRAIN_STEPS})",
    )
    args = parser.parse_args(argv)
    out = Path(args.out_dir) if args.out_dir else shipped_model_dir()
    started = time.perf_counter()
    build(out, pretrain_steps=args.pretrain_steps, log=lambda msg: print(msg, flush=True))
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({size} bytes) in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
