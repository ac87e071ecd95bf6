"""score: send the notebook's sample_score.json (a seeded random test_gen conversation) to the endpoint."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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


@dataclass
class Sample:
    """The notebook's sample_score.json, written to the workspace."""

    request_file: Path
    split: str
    line: int

    def report(self, raw: str, latency_ms: float, **extra: Any) -> dict[str, Any]:
        """Print the raw body and the parsed answer (any response shape); the stage's outputs."""
        text = parse_response(raw)
        return {
            **extra,
            "request_file": str(self.request_file),
            "split": self.split,
            "line": self.line,
            "latency_ms": latency_ms,
            "output": text[:500],
            "output_chars": len(text),
        }


def write_sample(ctx: Context) -> Sample:
    """A seeded random conversation of data.score_split, up to its last user turn, with the scoring
    parameters, as the request file both backends send."""
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
    text = json.dumps(build_request(messages, parameters), indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(request_file, text)
    ctx.ui.info(f"  {split}.jsonl line {line}: {messages[-1]['content'][:100]!r}")
    return Sample(request_file, split, line)


def show(ctx: Context, raw: str) -> None:
    """Print the raw response and the answer parsed from it."""
    ctx.ui.result(f"raw response: {raw}")
    ctx.ui.result(f"output: {parse_response(raw)}")


def run(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    ctx.require_local("score")
    sample = write_sample(ctx)
    endpoint = ctx.outputs("deploy")
    key = Path(endpoint["key_file"]).read_text(encoding="utf-8").strip()
    started = time.perf_counter()
    status, raw = invoke(
        endpoint["scoring_uri"],
        key,
        sample.request_file.read_bytes(),
        endpoint.get("deployment_name", "demo"),
        ctx.cfg.score.timeout_s,
    )
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    outputs = sample.report(raw, latency_ms, endpoint_name=endpoint.get("endpoint_name"), http_status=status)
    show(ctx, raw)
    return outputs


def summary(outputs: dict[str, Any]) -> str:
    return f"{outputs.get('output_chars')} chars in {outputs.get('latency_ms')} ms"
