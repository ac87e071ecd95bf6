"""The local backend's plan and evaluation hooks (`ftctl plan`, `ftctl evaluate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.evaluation import EvalReport
    from ftctl.plan import Plan
    from ftctl.stages.contract import State


class LocalQuality:
    def plan(self, ctx: Context, state: State, calibrate: bool) -> Plan:
        from ftctl.backends.local.plan import build_plan

        return build_plan(ctx, state, calibrate)

    def evaluate(self, ctx: Context, state: State, samples: int) -> EvalReport:
        from ftctl.backends.local.evaluate import evaluate

        return evaluate(ctx, state, samples)
