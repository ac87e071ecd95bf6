"""The Azure ML backend: the notebook's nine stages through azure-ai-ml. It owns the Azure handles (the
credential and the workspace and registry MLClients), built on first use with what the caller injects
(`transport`, `credential`: the tests' fake Azure ML service)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ftctl.backends.base import Backend, Capabilities
from ftctl.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from ftctl.backends.azureml.client import AzureHandles
    from ftctl.chat import Endpoint
    from ftctl.context import Context
    from ftctl.evaluation import EvalReport
    from ftctl.metrics import RunMetrics
    from ftctl.plan import Plan
    from ftctl.stages.contract import LogWriter, StageImpl, State


class AzureBackend(Backend):
    name = "azureml"
    capabilities = Capabilities(
        endpoint=True,
        metrics=True,
        logs=True,
        plan=True,
        evaluate=True,
        list_models=True,
        dry_run=True,
        cluster=True,
        export=True,
    )
    reads = {
        "auth": (
            "azureml.subscription_id",
            "azureml.resource_group",
            "azureml.workspace_name",
            "azureml.workspace_config",
            "azureml.registry_name",
        ),
        "pick-model": ("finetune.route",),
        "submit": (
            "azureml.experiment_name",
            "azureml.component_name",
            "azureml.component_version",
            "azureml.component_label",
            "azureml.force_rerun",
            "azureml.continue_on_step_failure",
        ),
    }

    @cached_property
    def handles(self) -> AzureHandles:
        """The credential, the workspace MLClient and the registry MLClient (azure.* imported here)."""
        from ftctl.backends.azureml.client import AzureHandles

        return AzureHandles(
            self.ctx, transport=self.options.get("transport"), credential=self.options.get("credential")
        )

    @cached_property
    def stages(self) -> Mapping[str, StageImpl]:
        from ftctl.backends.azureml.stages import (
            auth,
            check_compute,
            deploy,
            pick_model,
            prepare_data,
            register,
            score,
            submit,
            teardown,
        )

        table: dict[str, StageImpl] = {
            "auth": auth,
            "pick-model": pick_model,
            "check-compute": check_compute,
            "prepare-data": prepare_data,
            "submit": submit,
            "register": register,
            "deploy": deploy,
            "score": score,
            "teardown": teardown,
        }
        return table

    def endpoint(self, state: State, command: str) -> Endpoint:
        from ftctl.backends.azureml import hooks

        return hooks.endpoint(self.ctx, state, command)

    def metrics(self, state: State, run: str | None) -> RunMetrics:
        from ftctl.backends.azureml import hooks

        return hooks.metrics(self.ctx, state, run)

    def logs(self, state: State, step: str | None, follow: bool, write: LogWriter) -> dict[str, Any]:
        from ftctl.backends.azureml import hooks

        return hooks.logs(self.ctx, state, step, follow, write)

    def plan(self, state: State, calibrate: bool) -> Plan:
        """No calibration on Azure ML (ftctl.backends.azureml.preflight): steps and tokens, and a time
        only from a job's measured pace; planning needs no login."""
        from ftctl.backends.azureml.preflight import build_plan

        return build_plan(self.ctx, state)

    def evaluate(self, state: State, samples: int) -> EvalReport:
        """Held-out losses from the job's metrics and the previous version's tags."""
        from ftctl.backends.azureml.evaluate import evaluate

        return evaluate(self.ctx, state, samples)

    def export(self, state: State, fmt: str, out: Path, job: str | None) -> dict[str, Any]:
        """The registered version, downloaded, then written and checked on this machine (ftctl.export)."""
        from ftctl.backends.azureml.export import export

        return export(self.ctx, state, fmt, out, job)

    def list_models(self, show_all: bool) -> list[dict[str, Any]]:
        from ftctl.backends.azureml.stages.pick_model import list_models

        return list_models(self.ctx, show_all)


def azure(ctx: Context) -> AzureHandles:
    """The Azure ML handles of `ctx`'s backend (UsageError on another backend)."""
    backend = ctx.backend
    if not isinstance(backend, AzureBackend):
        raise UsageError(f"Azure ML is not available with --backend {backend.name}")
    return backend.handles
