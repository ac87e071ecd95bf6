"""score on Azure ML: the notebook's sample_score.json (a seeded random test_gen conversation and the
scoring parameters) sent with `online_endpoints.invoke`; prints the raw body and the parsed answer,
whichever response shape the serving container used (ftctl.scoring.parse_response)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml.client import calling
from ftctl.errors import UsageError
from ftctl.scoring import build_request, parse_response, pick_conversation
from ftctl.state import atomic_write_text

if TYPE_CHECKING:
    from ftctl.context import Context


def inputs(ctx: Context, state: dict[str, Any]) -> dict[str, Path]:
    files = state.get("stages", {}).get("prepare-data", {}).get("outputs", {}).get("files") or {}
    split = ctx.cfg.data.score_split
    return {f"{split}.jsonl": Path(files[split]["path"])} if split in files else {}


def run(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    cfg = ctx.cfg.score
    split = ctx.cfg.data.score_split
    files = ctx.outputs("prepare-data").get("files") or {}
    if split not in files:
        raise UsageError(f"data.score_split: the prepared data has no {split!r} split ({', '.join(files)})")
    line, messages = pick_conversation(Path(files[split]["path"]), cfg.seed)
    parameters = {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "do_sample": cfg.do_sample,
        "max_new_tokens": cfg.max_new_tokens,
    }
    request_file = ctx.workspace / "score" / "sample_score.json"
    request_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        request_file, json.dumps(build_request(messages, parameters), indent=2, ensure_ascii=False) + "\n"
    )
    endpoint = ctx.outputs("deploy")
    name, deployment = endpoint["endpoint_name"], endpoint.get("deployment_name", "demo")
    ctx.ui.info(f"  {split}.jsonl line {line}: {messages[-1]['content'][:100]!r}")
    started = time.perf_counter()
    with calling(f"scoring endpoint {name} (deployment {deployment})"):
        raw = ctx.azure.workspace.online_endpoints.invoke(
            endpoint_name=name, deployment_name=deployment, request_file=str(request_file)
        )
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    raw_text = raw if isinstance(raw, str) else json.dumps(raw)
    text = parse_response(raw_text)
    ctx.ui.result(f"raw response: {raw_text}")
    ctx.ui.result(f"output: {text}")
    return {
        "endpoint_name": name,
        "deployment_name": deployment,
        "request_file": str(request_file),
        "split": split,
        "line": line,
        "latency_ms": latency_ms,
        "output": text[:500],
        "output_chars": len(text),
    }


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('output_chars')} chars in {outputs.get('latency_ms')} ms"
