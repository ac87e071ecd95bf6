"""score on Azure ML: the notebook's sample_score.json (a seeded random test_gen conversation and the
scoring parameters) sent with `online_endpoints.invoke`; prints the raw body and the parsed answer,
whichever response shape the serving container used (ftctl.scoring.parse_response)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from ftctl.backends.azureml import dry_run
from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import Sample, show, write_sample
from ftctl.stages.shared import score_inputs as inputs
from ftctl.stages.shared import score_summary as summary

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def run(ctx: Context, call: StageCall) -> Outputs:
    if call.options.dry_run:  # never sends a request: shows it
        return dry_run.score(ctx, call)
    sample = write_sample(ctx, call.upstream)
    endpoint = call.upstream.deploy
    if endpoint.endpoint_kind == "serverless":
        return _score_serverless(ctx, call, sample)
    name, deployment = endpoint.need("endpoint_name"), endpoint.deployment_name or "demo"
    started = time.perf_counter()
    with calling(f"scoring endpoint {name} (deployment {deployment})"):
        raw = azure(ctx).workspace.online_endpoints.invoke(
            endpoint_name=name, deployment_name=deployment, request_file=str(sample.request_file)
        )
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    raw_text = raw if isinstance(raw, str) else json.dumps(raw)
    outputs = sample.report(raw_text, latency_ms, endpoint_name=name, deployment_name=deployment)
    show(ctx, call.upstream, raw_text, sample)
    return outputs


def _score_serverless(ctx: Context, call: StageCall, sample: Sample) -> Outputs:
    """The same sample on a serverless endpoint: sent to its chat completions route (hooks.endpoint)."""
    from ftctl.backends.azureml import hooks
    from ftctl.chat import post

    ep = hooks.endpoint(ctx, call.upstream.state, "score")
    body = sample.request_file.read_bytes()
    reply = post(ep, body, ctx.cfg.score.timeout_s)
    outputs = sample.report(reply.raw, reply.latency_ms, endpoint_name=ep.name, endpoint_kind="serverless")
    show(ctx, call.upstream, reply.raw, sample)
    return outputs


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
