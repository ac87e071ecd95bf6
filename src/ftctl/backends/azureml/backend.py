"""The Azure ML backend's table: its nine stage implementations, capabilities and hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml.quality import AzureQuality
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
from ftctl.stages.contract import (
    CLUSTER,
    DRY_RUN,
    ENDPOINT,
    EVALUATE,
    LIST_MODELS,
    LOGS,
    METRICS,
    PLAN,
    Backend,
    StageImpl,
)

if TYPE_CHECKING:
    from ftctl.chat import Endpoint
    from ftctl.context import Context
    from ftctl.metrics import RunMetrics
    from ftctl.stages.contract import LogWriter, State

STAGES: dict[str, StageImpl] = {
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


class AzureHooks:
    """The endpoint, metrics and logs hooks (ftctl.backends.azureml.hooks) and the registry's model
    list."""

    def endpoint(self, ctx: Context, state: State, command: str) -> Endpoint:
        from ftctl.backends.azureml import hooks

        return hooks.endpoint(ctx, state, command)

    def metrics(self, ctx: Context, state: State, run: str | None) -> RunMetrics:
        from ftctl.backends.azureml import hooks

        return hooks.metrics(ctx, state, run)

    def list_models(self, ctx: Context, show_all: bool) -> list[dict[str, Any]]:
        return pick_model.list_models(ctx, show_all)

    def live(self, ctx: Context, state: State | None) -> list[dict[str, Any]]:
        return []  # Azure ML keeps its jobs and endpoints; the state records their names

    def stop_live(
        self, ctx: Context, kinds: tuple[str, ...], unrecorded_in: State | None = None
    ) -> list[str]:
        return []

    def logs(
        self, ctx: Context, state: State, step: str | None, follow: bool, write: LogWriter
    ) -> dict[str, Any]:
        from ftctl.backends.azureml import hooks

        return hooks.logs(ctx, state, step, follow, write)


BACKEND = Backend(
    name="azureml",
    stages=STAGES,
    capabilities=frozenset({CLUSTER, DRY_RUN, ENDPOINT, EVALUATE, LIST_MODELS, LOGS, METRICS, PLAN}),
    hooks=AzureHooks(),
    quality=AzureQuality(),
)
