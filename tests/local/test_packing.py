"""Packed rows train exactly what the separate conversations would: no attention or loss crosses a
conversation boundary."""

from __future__ import annotations

import pytest

from ftctl.backends.local.trainer import IGNORE_INDEX, PackedCollator, pack_examples, tokenize_conversation

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "2 plus 3 is 5."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Green."},
    ],
    [{"role": "user", "content": "Spell cat."}, {"role": "assistant", "content": "C, A, T."}],
]


def _examples(tokenizer):
    out = []
    for conv in CONVERSATIONS:
        ids, labels = tokenize_conversation(tokenizer, conv, 256)
        out.append({"input_ids": ids, "labels": labels})
    return out


def test_rows_respect_the_length_and_keep_every_token(tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = _examples(tokenizer)
    longest = max(len(e["input_ids"]) for e in examples)
    rows = pack_examples(examples * 5, longest + 10, seed=1)
    assert all(len(r["input_ids"]) <= longest + 10 for r in rows)
    assert sum(len(r["input_ids"]) for r in rows) == 5 * sum(len(e["input_ids"]) for e in examples)
    labelled = sum(sum(1 for x in e["labels"] if x != IGNORE_INDEX) for e in examples)
    assert sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in rows) == 5 * labelled
    for row in rows:  # positions restart at 0 at every conversation
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert starts[0] == 0 and all(row["labels"][i] == IGNORE_INDEX for i in starts)


def test_packed_loss_equals_the_separate_losses(tiny_model_dir) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    examples = _examples(tokenizer)
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:  # one conversation at a time, summed over its labelled tokens
            ids = torch.tensor([e["input_ids"]])
            labels = torch.tensor([e["labels"]])
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
        (row,) = pack_examples(examples, 10_000, seed=0)
        batch = PackedCollator(tokenizer.pad_token_id)([row])
        assert "attention_mask" not in batch and batch["use_cache"] is False
        packed = float(model(**batch).loss)
        # And every conversation's logits in the row are those it gets alone: nothing leaks across.
        logits = model(**batch).logits[0]
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        worst = 0.0
        for start, end in zip(starts, starts[1:], strict=False):
            alone = model(input_ids=torch.tensor([row["input_ids"][start:end]])).logits[0]
            worst = max(worst, float((alone - logits[start:end]).abs().max()))
    assert len(starts) == len(examples) + 1
    assert packed == pytest.approx(total / count, rel=1e-5)
    assert worst < 1e-4
