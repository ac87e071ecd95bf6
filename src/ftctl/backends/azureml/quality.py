"""The Azure ML backend's plan and evaluation hooks (`ftctl plan`, `ftctl evaluate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ftctl.errors import UsageError

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.evaluation import EvalReport
    from ftctl.plan import Plan
    from ftctl.stages.contract import State


class AzureQuality:
    def plan(self, ctx: Context, state: State, calibrate: bool) -> Plan:
        """No calibration on Azure ML: the plan gives steps and tokens, not a time."""
        from ftctl.backends.azureml.preflight import build_plan

        return build_plan(ctx, state)

    def evaluate(self, ctx: Context, state: State, samples: int) -> EvalReport:
        raise UsageError("ftctl evaluate: not available on --backend azureml yet")
