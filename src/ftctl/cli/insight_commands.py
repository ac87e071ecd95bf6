"""Commands about the results: the job's metrics, the endpoint's credentials, a chat with the model,
and scoring a request of your own (`ftctl score --file`, which the score stage command hands to
`score_file` here). None of them changes the stage state, so none takes the workspace lock."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from ftctl.cli.common import command
from ftctl.ui import printable

if TYPE_CHECKING:
    from ftctl.chat import Endpoint
    from ftctl.context import Context
    from ftctl.ui import UI

PANEL = "Results"
# ruff: noqa: UP045 - typer reads Optional[...] annotations at run time (Python 3.10)


@command(PANEL)
def metrics(
    ctx: Context,
    plot: Optional[Path] = typer.Option(
        None, "--plot", metavar="PATH.png", help="Also write a loss-curve figure (train and eval loss)."
    ),
    run: Optional[str] = typer.Option(
        None, "--run", help="An MLflow run id or a job id; default: the job `ftctl submit` recorded."
    ),
) -> None:
    """Show the fine-tuning job's metrics from MLflow: loss, eval loss, perplexity, learning rate, tokens/s.

    One row per logged step, then the final values; --plot also draws the loss curves."""
    from ftctl import metrics as m
    from ftctl.errors import UsageError

    if plot is not None and plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {plot}: give a .png file name")
    ctx.backend.require("metrics")
    with ctx.ui.spinner("reading metrics from MLflow", quiet=True):
        found = ctx.backend.metrics(ctx.state_store.load(), run)
    written = None
    if plot is not None:
        written = m.plot(found, plot.expanduser())
        ctx.ui.info(f"wrote {written}")
    ctx.ui.result(m.render_table(found))
    ctx.ui.emit({**found.to_json(), "plot": str(written) if written else None})


@command(PANEL)
def credentials(
    ctx: Context,
    rotate: bool = typer.Option(
        False,
        "--rotate",
        help="Give the endpoint a new key first (the old one is refused at once); its URL stays.",
    ),
) -> None:
    """Show the endpoint's scoring URI and key (and, locally, the OpenAI-compatible base URL).

    Like `az ml online-endpoint get-credentials`: the one ftctl command that shows the key. The key
    stays the same across re-deploys; only --rotate changes it."""
    from ftctl.chat import endpoint

    if rotate:
        from ftctl.state import locked

        ctx.backend.require("rotate_key")
        with locked(ctx.workspace, ctx.command, ctx.cfg.lock_timeout_s):
            ctx.backend.rotate_key(ctx.state_store.load())
    data = endpoint(ctx, "credentials").credentials()
    ctx.ui.emit(data)
    width = max(len(key) for key in data)
    shown = {key: "-" if value is None else value for key, value in data.items()}
    ctx.ui.result("\n".join(f"{key:<{width}}  {value}" for key, value in shown.items()))
    if not ctx.ui.json_mode:
        ctx.ui.info("keep the key secret: anyone who has it can call the endpoint")


@command(PANEL)
def chat(
    ctx: Context,
    system: Optional[str] = typer.Option(
        None, "--system", help="A system message that opens the conversation."
    ),
    temperature: Optional[float] = typer.Option(
        None, "--temperature", min=0, help="Sampling temperature (0: greedy); default: score.temperature."
    ),
    top_p: Optional[float] = typer.Option(
        None, "--top-p", min=0, max=1, help="Nucleus sampling; default: score.top_p."
    ),
    max_new_tokens: Optional[int] = typer.Option(
        None, "--max-new-tokens", min=1, help="Longest reply in tokens; default: score.max_new_tokens."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Seed for sampling (repeatable replies)."),
) -> None:
    """Chat with the deployed model, several turns in one conversation.

    Type a message and press Enter; /reset starts over, /exit or Ctrl-D ends. Each reply shows its
    latency. Input is read line by line, so you can pipe a conversation in; with --json every turn is
    one JSON line on stdout."""
    from ftctl.chat import ChatSession, endpoint, generation_parameters, input_lines, require_stdin, run_chat

    stdin = require_stdin("ftctl chat")
    ep = endpoint(ctx, "chat")
    parameters = generation_parameters(
        ctx, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    session = ChatSession(ep, parameters, ctx.cfg.score.timeout_s, system=system)
    interactive = stdin.isatty()
    _chat_opening(ctx, ep, interactive)
    turns = run_chat(
        session,
        input_lines(stdin, "you> " if interactive else None),
        say=ctx.ui.info,
        answer=functools.partial(_show_reply, ctx.ui),
        interactive=interactive,
        waiting=lambda: ctx.ui.spinner("thinking", quiet=True),
    )
    if interactive:
        print(file=sys.stderr)
    ctx.ui.info(f"chat ended after {turns} turn{'' if turns == 1 else 's'}")


def _chat_opening(ctx: Context, ep: Endpoint, interactive: bool) -> None:
    """What the model is (the built-in demo model says so) and, on a terminal, how to chat."""
    from ftctl.chat import HELP
    from ftctl.stages.shared import demo_model_note

    picked = ctx.state_store.load().get("stages", {}).get("pick-model", {}).get("outputs", {})
    note = demo_model_note(ctx, picked.get("name"))
    if note:
        ctx.ui.info(note)
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
        ctx.ui.info(f"chatting with {ep.model or ep.name} at {ep.url} ({HELP})")


def _show_reply(ui: UI, turn: int, user: str, reply: str, latency_ms: float) -> None:
    if ui.json_mode:
        record = {"turn": turn, "user": user, "assistant": reply, "latency_ms": latency_ms}
        print(json.dumps(record, ensure_ascii=False), file=ui.out, flush=True)
        return
    print(printable(f"assistant> {reply}"), file=ui.out, flush=True)
    ui.info(f"  ({latency_ms:,.0f} ms)")


def score_file(ctx: Context, path: str) -> None:
    """`ftctl score --file REQUEST.json`: send your own request; the stage state is left alone."""
    from ftctl.chat import endpoint, generation_parameters, post, read_request, require_stdin

    if path == "-":
        require_stdin("score --file -")
    ep = endpoint(ctx, "score --file")
    body = read_request(path, generation_parameters(ctx))
    ctx.ui.info(f"> score --file {path} ({ep.scoring_uri})")
    reply = post(ep, json.dumps(body).encode("utf-8"), ctx.cfg.score.timeout_s)
    try:
        parsed = json.loads(reply.raw)
    except ValueError:
        parsed = reply.raw
    text = reply.text
    ctx.ui.result(f"raw response: {reply.raw}")
    ctx.ui.result(f"output: {text}")
    ctx.ui.info(f"  HTTP {reply.status} in {reply.latency_ms:,.0f} ms")
    ctx.ui.emit(
        {
            "endpoint_name": ep.name,
            "request_file": path,
            "http_status": reply.status,
            "latency_ms": reply.latency_ms,
            "response": parsed,
            "output": text,
        }
    )
