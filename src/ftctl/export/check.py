"""The export fidelity check: the export loaded back by an independent reader, against the fine-tuned model.

The reader is transformers itself (AutoModelForCausalLM / AutoTokenizer on the merged folder; peft over the
base model for the adapter; transformers' GGUF loader, `gguf_file=`, for gguf and ollama), never ftctl's
writer. On the first turns of held-out conversations it compares:
  - the chat template: the token ids the export's tokenizer renders (prompt with the generation prompt,
    and the whole conversation) against the fine-tuned model's tokenizer, exactly;
  - plain text: the token ids of a few probe texts (numbers, punctuation, whitespace runs, non-ASCII),
    exactly, where pre-tokenization differences (e.g. digits split one by one or not) would show;
  - next-token logits after each prompt: the largest absolute difference (within TOLERANCE[format]) and
    whether the top token agrees (where the fine-tuned model's top two are further apart than that);
  - that greedy replies end their turn on the stop tokens the export declares (generation_config.json,
    the GGUF's eos/eot ids, the Modelfile's stop strings), without running past an end-of-turn token
    into the next turn, at least as often as the fine-tuned model's do on its own stop tokens.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ftctl.export import Source

TOLERANCE = {"merged": 1e-4, "adapter": 1e-3, "gguf": 1e-3, "ollama": 1e-3}
PROMPTS = 8
MAX_NEW_TOKENS = 48
GGUF_FILE = "model.gguf"
PROBE_TEXTS = (
    "In 2024, 3.14159 x 12 = 37.7 and 1000000 people; call 555-0123 at 10:45pm (v2.0.1).",
    "  Indented\n\n\tcode: x[i] += 1  # don't, won't, it's   three   spaces\n",
    "Ünïcödé – “quotes”, naïve café, 東京, emoji 🙂!",
)


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _reference(src: Source) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(src.hf_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(src.hf_dir))


def _exported(src: Source, fmt: str, out: Path) -> tuple[Any, Any]:
    """The export as transformers reads it: (model, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if fmt in ("gguf", "ollama"):
        with contextlib.redirect_stderr(io.StringIO()):  # the loader's own progress bar
            model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=GGUF_FILE, dtype=torch.float32)
            return model.eval(), AutoTokenizer.from_pretrained(str(out), gguf_file=GGUF_FILE)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    if fmt == "adapter":
        import warnings

        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(str(src.base_dir), dtype=torch.float32)
        with warnings.catch_warnings():  # peft calls transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return PeftModel.from_pretrained(base, str(out)).eval(), tokenizer
    return AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval(), tokenizer


def declared_stops(fmt: str, out: Path, tokenizer: Any) -> list[int]:
    """The token ids the export itself says a reply ends on."""
    ids: list[int] = []
    if fmt in ("merged", "adapter"):
        config = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
        value = config.get("eos_token_id")
        ids = [value] if isinstance(value, int) else [int(v) for v in value or []]
    elif fmt == "gguf":
        from gguf import GGUFReader

        reader = GGUFReader(str(out / GGUF_FILE))
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
            field = reader.get_field(key)
            if field is not None:
                ids.append(int(field.parts[field.data[0]][0]))
    else:  # ollama: the Modelfile's stop strings, as tokens
        text = (out / "Modelfile").read_text(encoding="utf-8")
        for stop in re.findall(r'^PARAMETER stop "(.*)"$', text, flags=re.MULTILINE):
            token_id = tokenizer.convert_tokens_to_ids(stop)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
                ids.append(token_id)
    return sorted(set(ids))


def _conversations(src: Source) -> list[tuple[list[dict[str, str]], list[dict[str, str]]]]:
    """(prompt messages, the whole first exchange) of the first held-out conversations."""
    from ftctl.data.chat_tokens import first_turn, read_conversations

    if src.held_out is None:
        return [([{"role": "user", "content": "Hello! What can you do?"}],) * 2]  # type: ignore[list-item]
    found = []
    for _, messages in read_conversations(src.held_out):
        turn = first_turn(messages)
        if turn is not None:
            prompt, reply = turn
            found.append((prompt, [*prompt, {"role": "assistant", "content": reply}]))
        if len(found) >= PROMPTS:
            break
    return found


def _ids(tokenizer: Any, messages: list[dict[str, str]], prompt: bool) -> list[int]:
    rendered = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt)
    if isinstance(rendered, dict) or hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    return [int(t) for t in rendered]


def _first_difference(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _greedy_stops(
    model: Any, prompts: list[list[int]], stop: list[int], pad: int, turn_end: list[int]
) -> int:
    """How many greedy replies stop on one of `stop` without running past an end of turn first (a
    `turn_end` token of the fine-tuned model's before the stop is a reply that went on into the next turn)."""
    import torch

    ended = 0
    for ids in prompts:
        with torch.inference_mode():
            output = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=stop or None,
                pad_token_id=pad,
            )
        reply = output[0, len(ids) :].tolist()
        at = next((i for i, t in enumerate(reply) if t in stop), None)
        ended += at is not None and not any(t in turn_end for t in reply[:at])
    return ended


def _template_differences(
    ref_tok: Any, exp_tok: Any, conversations: list[tuple[list[dict[str, str]], list[dict[str, str]]]]
) -> tuple[list[str], list[list[int]]]:
    """Where the export's chat template renders other ids (one line each), and the prompts' ids."""
    found: list[str] = []
    prompts: list[list[int]] = []
    for n, (prompt, whole) in enumerate(conversations):
        for messages, with_prompt, what in ((prompt, True, "prompt"), (whole, False, "conversation")):
            want, got = _ids(ref_tok, messages, with_prompt), _ids(exp_tok, messages, with_prompt)
            if want != got:
                at = _first_difference(want, got)
                wrong, right = got[at : at + 1], want[at : at + 1]
                found.append(f"held-out {what} {n + 1}: token {at} is {wrong} instead of {right}")
        prompts.append(_ids(ref_tok, prompt, True))
    return found, prompts


def _text_differences(ref_tok: Any, exp_tok: Any) -> list[str]:
    """Where the export's tokenizer splits the probe texts otherwise, one line each."""
    found = []
    for n, text in enumerate(PROBE_TEXTS):
        want = ref_tok.encode(text, add_special_tokens=False)
        got = exp_tok.encode(text, add_special_tokens=False)
        if want != got:
            at = _first_difference(want, got)
            found.append(f"probe {n + 1}: token {at} is {got[at : at + 1]} instead of {want[at : at + 1]}")
    return found


def check(src: Source, fmt: str, out: Path) -> dict[str, Any]:
    """The figures of the check, with "ok" and the "problems" (one line each)."""
    import torch

    from ftctl.export import stop_ids

    _quiet()
    tolerance = TOLERANCE[fmt]
    problems: list[str] = []
    ref_model, ref_tok = _reference(src)
    try:
        exp_model, exp_tok = _exported(src, fmt, out)
    except Exception as exc:  # noqa: BLE001 - the reader's own complaint is the finding
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {
            "ok": False,
            "problems": [f"transformers cannot read it: {first[:300]}"],
            "tolerance": tolerance,
        }
    template_diffs, prompts = _template_differences(ref_tok, exp_tok, _conversations(src))
    text_diffs = _text_differences(ref_tok, exp_tok)
    if text_diffs:
        problems.append(
            f"plain text tokenizes to other ids ({len(text_diffs)} of {len(PROBE_TEXTS)}; {text_diffs[0]})"
        )
    max_diff, agree, compared = 0.0, 0, 0
    with torch.inference_mode():
        for ids in prompts:
            tensor = torch.tensor([ids])
            want = ref_model(input_ids=tensor).logits[0, -1].float()
            got = exp_model(input_ids=tensor).logits[0, -1].float()
            if got.shape != want.shape:
                problems.append(f"the vocabulary has {got.shape[-1]} logits instead of {want.shape[-1]}")
                break
            max_diff = max(max_diff, float((want - got).abs().max()))
            top2 = torch.topk(want, 2).values
            if float(top2[0] - top2[1]) > tolerance:
                compared += 1
                agree += int(int(want.argmax()) == int(got.argmax()))
    if max_diff > tolerance:
        problems.append(f"next-token logits differ by up to {max_diff:.3g} (tolerance {tolerance:g})")
    if agree < compared:
        problems.append(f"the top next token agrees on {agree} of {compared} held-out prompts")
    if template_diffs:
        problems.append(
            f"the chat template renders other token ids ({len(template_diffs)} of {2 * len(prompts)}; "
            f"{template_diffs[0]})"
        )
    stops = declared_stops(fmt, out, exp_tok)
    pad = ref_tok.pad_token_id if ref_tok.pad_token_id is not None else 0
    turn_end = stop_ids(src.hf_dir)
    ref_stops = _greedy_stops(ref_model, prompts, turn_end, pad, turn_end)
    exp_stops = _greedy_stops(exp_model, prompts, stops, pad, turn_end)
    if exp_stops < ref_stops:
        problems.append(
            f"greedy replies end their turn {exp_stops}/{len(prompts)} times on the export's stop tokens "
            f"{stops}, the fine-tuned model's {ref_stops}/{len(prompts)}"
        )
    return {
        "ok": not problems,
        "problems": problems,
        "reader": "transformers (gguf_file)"
        if fmt in ("gguf", "ollama")
        else "transformers" + (" + peft over the base model" if fmt == "adapter" else ""),
        "prompts": len(prompts),
        "logits_max_abs_diff": max_diff,
        "tolerance": tolerance,
        "top1_agreement": f"{agree}/{compared}",
        "template_token_ids_equal": f"{2 * len(prompts) - len(template_diffs)}/{2 * len(prompts)}",
        "text_token_ids_equal": f"{len(PROBE_TEXTS) - len(text_diffs)}/{len(PROBE_TEXTS)}",
        "stop_tokens": stops,
        "greedy_replies_end_turn": f"{exp_stops}/{len(prompts)}",
        "fine_tuned_replies_end_turn": f"{ref_stops}/{len(prompts)}",
    }
