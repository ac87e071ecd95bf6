"""The Azure ML backend's plan and evaluation hooks (`ftctl plan`, `ftctl evaluate`): neither logs in to
plan, and evaluate reads the job's own metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.evaluation import EvalReport
    from ftctl.plan import Plan
    from ftctl.stages.contract import State


class AzureQuality:
    def plan(self, ctx: Context, state: State, calibrate: bool) -> Plan:
        """No calibration on Azure ML (ftctl.backends.azureml.preflight): steps and tokens, not a time."""
        from ftctl.backends.azureml.preflight import build_plan

        return build_plan(ctx, state)

    def evaluate(self, ctx: Context, state: State, samples: int) -> EvalReport:
        """Held-out losses from the job's metrics and the previous version's tags
        (ftctl.backends.azureml.evaluate)."""
        from ftctl.backends.azureml.evaluate import evaluate

        return evaluate(ctx, state, samples)
