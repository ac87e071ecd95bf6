"""score: send the notebook's sample_score.json (a seeded random test_gen conversation) to the endpoint,
with the one scoring client every command uses (ftctl.chat.post)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import score_inputs as inputs
from ftctl.stages.shared import score_summary as summary
from ftctl.stages.shared import show, write_sample

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


def run(ctx: Context, call: StageCall) -> Outputs:
    from ftctl.backends.local.hooks import endpoint
    from ftctl.chat import post

    sample = write_sample(ctx, call.upstream)
    ep = endpoint(ctx, call.state)  # the recorded endpoint, checked to run, with its key
    reply = post(ep, sample.request_file.read_bytes(), ctx.cfg.score.timeout_s)
    outputs = sample.report(reply.raw, reply.latency_ms, endpoint_name=ep.name, http_status=reply.status)
    show(ctx, call.upstream, reply.raw, sample)
    return outputs


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
