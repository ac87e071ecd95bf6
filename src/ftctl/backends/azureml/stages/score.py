"""score on Azure ML: the notebook's sample_score.json (a seeded random test_gen conversation and the
scoring parameters) sent with `online_endpoints.invoke`; prints the raw body and the parsed answer,
whichever response shape the serving container used (ftctl.scoring.parse_response)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml.client import calling
from ftctl.stages.score import inputs, show, summary, write_sample

if TYPE_CHECKING:
    from ftctl.context import Context


def run(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    sample = write_sample(ctx)
    endpoint = ctx.outputs("deploy")
    name, deployment = endpoint["endpoint_name"], endpoint.get("deployment_name", "demo")
    started = time.perf_counter()
    with calling(f"scoring endpoint {name} (deployment {deployment})"):
        raw = ctx.azure.workspace.online_endpoints.invoke(
            endpoint_name=name, deployment_name=deployment, request_file=str(sample.request_file)
        )
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    raw_text = raw if isinstance(raw, str) else json.dumps(raw)
    outputs = sample.report(raw_text, latency_ms, endpoint_name=name, deployment_name=deployment)
    show(ctx, raw_text)
    return outputs


__all__ = ["inputs", "run", "summary"]
