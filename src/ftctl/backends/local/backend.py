"""The local backend's table: its nine stage implementations, capabilities and hooks."""

from __future__ import annotations

from ftctl.backends.local.hooks import LocalHooks
from ftctl.backends.local.quality import LocalQuality
from ftctl.backends.local.stages import (
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
    Missing,
    StageImpl,
)

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

BACKEND = Backend(
    name="local",
    stages=STAGES,
    capabilities=frozenset({METRICS, ENDPOINT, LOGS, PLAN, EVALUATE}),
    hooks=LocalHooks(),
    quality=LocalQuality(),
    missing={
        DRY_RUN: Missing("--dry-run is for --backend azureml (the local backend creates nothing remote)"),
        CLUSTER: Missing("--compute is for --backend azureml (the local backend has no cluster)"),
        LIST_MODELS: Missing(
            "--list lists an Azure ML registry's models", hint="use --backend azureml (and its config)"
        ),
    },
)
