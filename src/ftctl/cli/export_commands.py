"""`ftctl export`: the fine-tuned model as a transformers folder, a PEFT adapter, a GGUF file or an Ollama
model, checked by an independent reader before ftctl says it is done."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ftctl.cli.common import command

if TYPE_CHECKING:
    from ftctl.context import Context

PANEL = "Quality"
# ruff: noqa: UP045 - typer reads Optional[...] annotations at run time (Python 3.10)


@command(PANEL)
def export(
    ctx: Context,
    out: Path = typer.Argument(..., help="A new (or empty) folder to write the export to."),
    fmt: str = typer.Option(
        "merged",
        "--format",
        help="merged (transformers folder) | adapter (PEFT) | gguf | ollama (GGUF + Modelfile).",
    ),
    job: Optional[str] = typer.Option(
        None, "--job", help="Export this job's model instead of the registered one."
    ),
) -> None:
    """Export the registered model (or --job's) and check it: an independent reader (transformers, its GGUF
    loader) must give the fine-tuned model's next-token logits, chat-template token ids and end of turn;
    a mismatch is exit 1 naming what differs. The figures go in OUT/ftctl_export.json."""
    ctx.backend.require("export")
    found = ctx.backend.export(ctx.state_store.load(), fmt, out, job)
    check = found["check"]
    ctx.ui.info(
        f"  checked with {check['reader']} on {check['prompts']} held-out prompts: logits max abs diff "
        f"{check['logits_max_abs_diff']:.2g} (tolerance {check['tolerance']:g}), top-1 agreement "
        f"{check['top1_agreement']}, chat template token ids equal {check['template_token_ids_equal']}, "
        f"plain-text token ids equal {check['text_token_ids_equal']}, "
        f"greedy replies end their turn {check['greedy_replies_end_turn']} "
        f"(fine-tuned {check['fine_tuned_replies_end_turn']})"
    )
    ctx.ui.result(f"exported {found['registered'] or 'job ' + found['job_id']} as {fmt} to {found['out']}")
    ctx.ui.emit(found)
