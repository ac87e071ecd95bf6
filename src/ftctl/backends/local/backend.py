"""The local backend: the nine stages on this machine, offline (transformers + peft, MLflow, a local
endpoint). It owns the workspace handle (folders and MLflow stores), built on first use."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ftctl.backends.base import Backend, Capabilities
from ftctl.errors import FtctlError, UsageError

if TYPE_CHECKING:
    from pathlib import Path

    from ftctl.backends.local.workspace import LocalWorkspace
    from ftctl.chat import Endpoint
    from ftctl.context import Context
    from ftctl.evaluation import EvalReport
    from ftctl.metrics import RunMetrics
    from ftctl.plan import Plan
    from ftctl.stages.contract import LogWriter, StageImpl, State


class LocalBackend(Backend):
    name = "local"
    capabilities = Capabilities(
        endpoint=True,
        metrics=True,
        logs=True,
        plan=True,
        evaluate=True,
        rotate_key=True,
        export=True,
        loss_weights=True,
    )
    unsupported = {
        "dry_run": ("--dry-run is for --backend azureml (the local backend creates nothing remote)", None),
        "cluster": ("--compute is for --backend azureml (the local backend has no cluster)", None),
        "list_models": (
            "--list lists an Azure ML registry's models",
            "use --backend azureml (and its config)",
        ),
    }

    @cached_property
    def workspace(self) -> LocalWorkspace:
        """The folders plus MLflow tracking and registry stores."""
        from ftctl.backends.local.workspace import LocalWorkspace

        return LocalWorkspace(self.ctx.workspace)

    @cached_property
    def stages(self) -> Mapping[str, StageImpl]:
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
        from ftctl.backends.local import hooks

        return hooks.endpoint(self.ctx, state)

    def metrics(self, state: State, run: str | None) -> RunMetrics:
        from ftctl.backends.local import hooks

        return hooks.metrics(self.ctx, state, run)

    def logs(self, state: State, step: str | None, follow: bool, write: LogWriter) -> dict[str, Any]:
        from ftctl.backends.local import hooks

        return hooks.logs(state, step, follow, write)

    def plan(self, state: State, calibrate: bool) -> Plan:
        from ftctl.backends.local.preflight import build_plan

        return build_plan(self.ctx, state, calibrate)

    def export(self, state: State, fmt: str, out: Path, job: str | None) -> dict[str, Any]:
        from ftctl.backends.local.export import export

        return export(self.ctx, state, fmt, out, job)

    def evaluate(self, state: State, samples: int) -> EvalReport:
        from ftctl.backends.local.evaluate import evaluate

        return evaluate(self.ctx, state, samples)

    def relocate(self, old: str, new: str, state: State) -> None:
        from pathlib import Path

        from ftctl.backends.local.workspace import LocalWorkspace

        self.workspace.relocate(old, new)
        # auth's record of the MLflow store: an SQLAlchemy URI (sqlite:///PATH, or an escaped form)
        auth = ((state.get("stages") or {}).get("auth") or {}).get("outputs") or {}
        before = LocalWorkspace(Path(old)).tracking_uri
        for key in ("tracking_uri", "registry_uri"):
            if auth.get(key) == before:
                auth[key] = self.workspace.tracking_uri

    tracks_processes = True

    def warm_up(self, stages: Sequence[str]) -> None:
        """A run that will train or serve starts the warm process now (warm.py): its ~9 s of imports
        then overlap the stages before, and the trainer and the endpoint start without them."""
        from ftctl.backends.local import warm

        if warm.running() is None and {"submit", "deploy"} & set(stages):
            with contextlib.suppress(OSError):  # without it, everything starts cold, as before
                warm.start(log=self.workspace.root / "warm.log")

    def ended_outcome(self, stage: str, outputs: dict[str, Any]) -> tuple[str, str] | None:
        from ftctl.backends.local.stages.submit import ended_outcome

        return ended_outcome(outputs) if stage == "submit" else None

    def outputs_gone(self, stage: str, outputs: dict[str, Any]) -> str | None:
        if stage == "deploy":
            from ftctl.backends.local.stages.deploy import key_gone

            return key_gone(self.ctx, outputs)
        if stage != "register" or not outputs.get("model_name") or not outputs.get("version"):
            return None
        return self.workspace.registry_problem(str(outputs["model_name"]), str(outputs["version"]))

    def explain_error(self, exc: BaseException) -> FtctlError | None:
        return self.workspace.store_error(exc)

    def rotate_key(self, state: State) -> None:
        from ftctl.backends.local.stages.deploy import rotate_key

        rotate_key(self.ctx, state)

    def live(self, state: State | None) -> list[dict[str, Any]]:
        from ftctl.backends.local import hooks

        return hooks.live(self.ctx, state)

    def stop_live(self, kinds: tuple[str, ...], unrecorded_in: State | None = None) -> list[str]:
        from ftctl.backends.local import hooks

        return hooks.stop_live(self.ctx, kinds, unrecorded_in)


def local(ctx: Context) -> LocalWorkspace:
    """The local workspace handle of `ctx`'s backend (UsageError on another backend)."""
    backend = ctx.backend
    if not isinstance(backend, LocalBackend):
        raise UsageError(f"the local workspace is not available with --backend {backend.name}")
    return backend.workspace
