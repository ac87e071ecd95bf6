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
    """`ftctl evaluate` from the job's own metrics (ftctl.backends.azureml.evaluate); `ftctl plan` is
    still to come."""

    # --- ftctl plan ---------------------------------------------------------------------------------
    # A placeholder that keeps the QualityHooks Protocol whole; the backend does not declare PLAN, so
    # `ftctl plan` says it is not available before reaching it. To be replaced by the real plan.

    def plan(self, ctx: Context, state: State, calibrate: bool) -> Plan:
        raise UsageError("ftctl plan: not available on --backend azureml yet")

    # --- ftctl evaluate -----------------------------------------------------------------------------

    def evaluate(self, ctx: Context, state: State, samples: int) -> EvalReport:
        from ftctl.backends.azureml.evaluate import evaluate

        return evaluate(ctx, state, samples)
