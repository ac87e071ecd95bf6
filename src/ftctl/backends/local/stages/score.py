"""score: send the notebook's sample_score.json (a seeded random test_gen conversation) to the endpoint."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from ftctl.errors import StageFailed
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import score_inputs as inputs
from ftctl.stages.shared import score_summary as summary
from ftctl.stages.shared import show, write_sample

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


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


def run(ctx: Context, call: StageCall) -> Outputs:
    sample = write_sample(ctx, call.upstream)
    endpoint = call.upstream.deploy
    key = Path(endpoint.need("key_file")).read_text(encoding="utf-8").strip()
    started = time.perf_counter()
    status, raw = invoke(
        endpoint.need("scoring_uri"),
        key,
        sample.request_file.read_bytes(),
        endpoint.deployment_name or "demo",
        ctx.cfg.score.timeout_s,
    )
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    outputs = sample.report(raw, latency_ms, endpoint_name=endpoint.endpoint_name, http_status=status)
    show(ctx, call.upstream, raw, sample)
    return outputs


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
