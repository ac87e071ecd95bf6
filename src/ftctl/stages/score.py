"""score: send the notebook's sample_score.json (a seeded random test_gen conversation) to the endpoint."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.errors import StageFailed, UsageError
from ftctl.scoring import build_request, parse_response, pick_conversation
from ftctl.state import atomic_write_text

if TYPE_CHECKING:
    from ftctl.context import Context


def inputs(ctx: Context, state: dict[str, Any]) -> dict[str, Path]:
    files = state.get("stages", {}).get("prepare-data", {}).get("outputs", {}).get("files") or {}
    split = ctx.cfg.data.score_split
    return {f"{split}.jsonl": Path(files[split]["path"])} if split in files else {}


def invoke(url: str, key: str, body: bytes, deployment: str, timeout_s: float) -> tuple[int, str]:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {key}",
            "azureml-model-deployment": deployment,
        },
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")[:300]
        raise StageFailed(f"the endpoint answered HTTP {exc.code}: {text}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StageFailed(
            f"the endpoint at {url} is unreachable ({reason})", hint="run `ftctl deploy`"
        ) from None


def run(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    ws = ctx.require_local("score")
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
    request = build_request(messages, parameters)
    request_file = ws.root / "score" / "sample_score.json"
    request_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(request_file, json.dumps(request, indent=2, ensure_ascii=False) + "\n")
    endpoint = ctx.outputs("deploy")
    key = Path(endpoint["key_file"]).read_text(encoding="utf-8").strip()
    ctx.ui.info(f"  {split}.jsonl line {line}: {messages[-1]['content'][:100]!r}")
    started = time.perf_counter()
    status, raw = invoke(
        endpoint["scoring_uri"],
        key,
        request_file.read_bytes(),
        endpoint.get("deployment_name", "demo"),
        cfg.timeout_s,
    )
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    text = parse_response(raw)
    ctx.ui.result(f"raw response: {raw}")
    ctx.ui.result(f"output: {text}")
    return {
        "endpoint_name": endpoint.get("endpoint_name"),
        "request_file": str(request_file),
        "split": split,
        "line": line,
        "http_status": status,
        "latency_ms": latency_ms,
        "output": text[:500],
        "output_chars": len(text),
    }


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('output_chars')} chars in {outputs.get('latency_ms')} ms"
