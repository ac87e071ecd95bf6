"""The nine stages, their dependencies and fingerprints, and the rules for running them.

A stage module (ftctl.stages.<name>) provides:
  run(ctx, rec) -> dict          do the work, return the outputs; `rec` is the stage's record (status
                                 running), whose outputs hold what an interrupted attempt recorded
                                 (e.g. a job id) so the stage can re-attach instead of starting again.
  inputs(ctx, state) -> dict     optional: label -> Path of files whose content the stage reads.
  alive(ctx, outputs) -> bool    optional: whether the long-lived thing it started is still up.
  retire(ctx, outputs)           optional: stop what a previous attempt started before it runs again.
  summary(outputs) -> str        optional: key outputs for `ftctl status`.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ftctl import state as st
from ftctl.errors import FtctlError, StageFailed, StateError, UpstreamNotReady

if TYPE_CHECKING:
    from ftctl.context import Context


class Detached(Exception):
    """Raised by a stage that started long-running work and, as asked (--no-wait), does not wait."""


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: tuple[str, ...]
    reads: tuple[str, ...]  # config key paths (or section prefixes) whose values the stage uses
    help: str
    always_run: bool = False  # an explicit `ftctl <stage>` runs it even when up to date
    needs_live: tuple[str, ...] = ()  # upstream stages whose long-lived resource must be up

    def impl(self, backend: str) -> ModuleType:
        """The module implementing this stage on `backend`.

        local: ftctl.stages.<name>; azureml: ftctl.backends.azureml.stages.<name>, which reuses the
        backend-independent parts of ftctl.stages (data preparation, finetune parameters, lineage).
        """
        module = self.name.replace("-", "_")
        if backend == "azureml":
            return importlib.import_module(f"ftctl.backends.azureml.stages.{module}")
        return importlib.import_module(f"ftctl.stages.{module}")


STAGES: tuple[Stage, ...] = (
    Stage(
        "auth",
        (),
        (
            "backend",
            "azureml.subscription_id",
            "azureml.resource_group",
            "azureml.workspace_name",
            "azureml.workspace_config",
            "azureml.registry_name",
        ),
        "Connect to the backend: local MLflow stores or Azure ML.",
    ),
    Stage("pick-model", ("auth",), ("model",), "Resolve the base model and read its metadata."),
    Stage(
        "check-compute",
        ("pick-model",),
        ("compute", "finetune.precision"),
        "Find or create compute; check allow/deny lists.",
    ),
    Stage("prepare-data", ("auth",), ("data",), "Download, validate and write the ultrachat splits."),
    Stage(
        "submit",
        ("check-compute", "prepare-data"),
        (
            "finetune",
            "azureml.experiment_name",
            "azureml.component_name",
            "azureml.component_version",
            "azureml.component_label",
            "azureml.force_rerun",
            "azureml.continue_on_step_failure",
        ),
        "Fine-tune the model (a job).",
    ),
    Stage("register", ("submit",), ("register",), "Register the fine-tuned model in the registry."),
    Stage("deploy", ("register",), ("deploy",), "Serve the registered model behind an endpoint."),
    Stage(
        "score",
        ("deploy", "prepare-data"),
        ("score", "data.score_split"),
        "Score a sample conversation on the endpoint.",
        always_run=True,
        needs_live=("deploy",),
    ),
    Stage("teardown", ("deploy",), (), "Delete the endpoint.", always_run=True),
)
BY_NAME = {stage.name: stage for stage in STAGES}
ORDER = [stage.name for stage in STAGES]


def get_stage(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise StateError(f"unknown stage {name!r}; stages are: {', '.join(ORDER)}") from None


def downstream(name: str) -> list[str]:
    """Every stage that depends on `name`, directly or not, in pipeline order."""
    found = {name}
    for stage in STAGES:
        if any(up in found for up in stage.upstream):
            found.add(stage.name)
    found.discard(name)
    return [n for n in ORDER if n in found]


# --- fingerprints and staleness -------------------------------------------------------------------


def stage_digest(rec: dict[str, Any]) -> str:
    """What downstream stages remember of an upstream: its fingerprint and outputs."""
    return st.digest({"fingerprint": rec.get("fingerprint"), "outputs": rec.get("outputs")})


def fingerprint(ctx: Context, stage: Stage, state: dict[str, Any]) -> dict[str, Any]:
    inputs_fn = getattr(stage.impl(ctx.backend), "inputs", None)
    files: dict[str, Path] = inputs_fn(ctx, state) if inputs_fn else {}
    return {
        "params": ctx.config.select(stage.reads),
        "inputs": {label: st.file_signature(Path(path)) for label, path in sorted(files.items())},
        "upstream": {up: stage_digest(st.record(state, up)) for up in stage.upstream},
    }


@dataclass
class Evaluation:
    status: str
    stale: bool
    reason: str | None
    cause: str | None = None  # the stage where the staleness starts ("submit is stale: ...")


def _fmt(value: Any) -> str:
    return "null" if value is None else str(value)


@functools.cache
def _config_defaults() -> dict[str, Any]:
    from ftctl.config import Config, flatten

    return flatten(Config().model_dump(mode="json", by_alias=True))


def explain_change(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """Why a recorded fingerprint no longer matches (None when it does)."""
    if not old:
        return "no fingerprint recorded"
    reasons = []
    old_params, new_params = old.get("params", {}), new["params"]
    for key in sorted(set(old_params) | set(new_params)):
        if key not in old_params and new_params[key] == _config_defaults().get(key):
            continue  # a setting newer than the recorded run, at its default: nothing changed
        if key not in new_params:
            continue  # a setting this version no longer has
        if old_params.get(key) != new_params.get(key):
            reasons.append(f"{key} changed ({_fmt(old_params.get(key))} -> {_fmt(new_params.get(key))})")
    old_inputs, new_inputs = old.get("inputs", {}), new["inputs"]
    for label in sorted(set(old_inputs) | set(new_inputs)):
        if old_inputs.get(label) != new_inputs.get(label):
            reasons.append(f"{label} changed")
    old_up, new_up = old.get("upstream", {}), new["upstream"]
    for up in sorted(set(old_up) | set(new_up)):
        if old_up.get(up) != new_up.get(up):
            reasons.append(f"{up} re-ran")
    return "; ".join(reasons) or None


def evaluate(ctx: Context, state: dict[str, Any]) -> dict[str, Evaluation]:
    """Status and staleness of every stage against the current config and files."""
    result: dict[str, Evaluation] = {}
    for stage in STAGES:
        rec = st.record(state, stage.name)
        status = rec["status"]
        if status != st.SUCCEEDED:
            result[stage.name] = Evaluation(status, False, None)
            continue
        reason = cause = None
        for up in stage.upstream:
            up_eval = result[up]
            if up_eval.status != st.SUCCEEDED:
                reason, cause = f"{up} is {up_eval.status}", up
            elif up_eval.stale:
                reason, cause = up_eval.reason, up_eval.cause
            if reason:
                break
        if reason is None:
            reason = explain_change(rec.get("fingerprint"), fingerprint(ctx, stage, state))
            cause = stage.name if reason else None
        if reason and cause and cause != stage.name and not reason.startswith(f"{cause} is "):
            reason = f"{cause} is stale: {reason}"
        result[stage.name] = Evaluation(status, reason is not None, reason, cause)
    return result


def summary(stage: Stage, rec: dict[str, Any], backend: str = "local") -> str:
    fn = getattr(stage.impl(backend), "summary", None)
    outputs = rec.get("outputs") or {}
    if rec.get("status") == st.FAILED and rec.get("error"):
        return f"{rec['error'].get('type')}: {rec['error'].get('message', '')}".splitlines()[0][:80]
    return fn(outputs) if fn and outputs else ""


# --- running ----------------------------------------------------------------------------------------


class Runner:
    """Runs stages under the workspace lock the caller holds, recording everything in the state file."""

    def __init__(self, ctx: Context, check_backend: bool = True) -> None:
        """Loads the state; with check_backend=False (reset) an unreadable state leaves .state None."""
        self.ctx = ctx
        self.store = ctx.state_store
        if not check_backend:
            try:
                self.state = self.store.load()
            except StateError:
                self.state = None  # type: ignore[assignment]
                return
        else:
            self.state = self.store.load()
        ctx.state = self.state
        backend = self.state.get("backend")
        if check_backend and backend and backend != ctx.config.values.backend:
            raise StateError(
                f"workspace {ctx.workspace} holds a {backend} run, but the backend is now "
                f"{ctx.config.values.backend}",
                hint=f"pass --backend {backend}, use another --workspace, or `ftctl reset --all`",
            )
        self.state["backend"] = ctx.config.values.backend
        self.state.setdefault("run_id", None)
        if not self.state["run_id"]:
            self.state["run_id"] = st.new_run_id()

    def save(self) -> None:
        self.store.save(self.state)

    def alive(self, name: str) -> bool:
        fn = getattr(get_stage(name).impl(self.ctx.backend), "alive", None)
        rec = st.record(self.state, name)
        return bool(fn(self.ctx, rec.get("outputs") or {})) if fn else True

    def require_upstream(self, stage: Stage) -> None:
        for up in stage.upstream:
            rec = st.record(self.state, up)
            if rec["status"] != st.SUCCEEDED:
                raise UpstreamNotReady(
                    f"{stage.name} needs {up}, which is {rec['status']}",
                    hint=f"run `ftctl {up}` first (or `ftctl run --to {stage.name}`)",
                )
        for up in stage.needs_live:
            if not self.alive(up):
                raise UpstreamNotReady(
                    f"{stage.name} needs the endpoint from {up}, and it is not running "
                    "(it was torn down or its process ended)",
                    hint=f"run `ftctl {up}` first",
                )

    def execute(self, stage: Stage) -> dict[str, Any]:
        """Run one stage now (re-attaching to what an interrupted attempt started)."""
        ui = self.ctx.ui
        self.require_upstream(stage)
        rec = st.record(self.state, stage.name)
        reattach = rec["status"] == st.RUNNING and bool(rec.get("outputs"))
        if not reattach:
            # What the previous attempt left running (deploy's endpoint) goes before its record does:
            # forgetting it first would leave it running unrecorded.
            retire = getattr(stage.impl(self.ctx.backend), "retire", None)
            if retire is not None and rec.get("outputs"):
                retire(self.ctx, rec["outputs"])
            rec.update(
                status=st.RUNNING,
                attempt=rec.get("attempt", 0) + 1,
                started_at=st.now_iso(),
                ended_at=None,
                fingerprint=fingerprint(self.ctx, stage, self.state),
                outputs={},
                error=None,
            )
            self.save()

        def checkpoint(outputs: dict[str, Any]) -> None:
            rec["outputs"] = dict(outputs)
            self.save()

        self.ctx.checkpoint = checkpoint
        try:
            outputs = stage.impl(self.ctx.backend).run(self.ctx, rec)
        except Detached as detached:
            ui.info(f"  {detached}")
            return {"status": st.RUNNING, **rec["outputs"]}
        except KeyboardInterrupt:
            if rec.get("outputs"):
                ui.info(
                    f"interrupted; {stage.name} keeps running in the background. "
                    f"Re-attach with `ftctl {stage.name}`."
                )
            else:
                self._fail(rec, "Interrupted", "interrupted by the user")
            raise
        except FtctlError as exc:
            self._fail(rec, type(exc).__name__, exc.message)
            rerun = f"re-run it with `ftctl {stage.name}`"
            exc.hint = f"{exc.hint}; then {rerun}" if exc.hint else rerun
            raise
        except Exception as exc:
            self._fail(rec, type(exc).__name__, str(exc))
            raise StageFailed(
                f"{stage.name} failed: unexpected {type(exc).__name__}: {exc}",
                hint=f"re-run it with `ftctl {stage.name}` (add --debug for the traceback)",
            ) from exc
        finally:
            self.ctx.checkpoint = None
        rec.update(status=st.SUCCEEDED, ended_at=st.now_iso(), outputs=outputs, error=None)
        self.save()
        return outputs

    def _fail(self, rec: dict[str, Any], kind: str, message: str) -> None:
        rec.update(status=st.FAILED, ended_at=st.now_iso(), error={"type": kind, "message": message})
        self.save()

    def run_one(self, name: str, force: bool = False) -> dict[str, Any]:
        """`ftctl <stage>`: run it unless it is up to date (and its resource, if any, is up)."""
        stage = get_stage(name)
        ui = self.ctx.ui
        if self.ctx.dry_run:
            # Show what the stage would create; nothing is sent that creates anything, nothing recorded.
            self.require_upstream(stage)
            outputs = stage.impl(self.ctx.backend).run(self.ctx, st.empty_record())
            return {"stage": name, "status": "dry run", "outputs": outputs}
        evaluation = evaluate(self.ctx, self.state)
        for up in stage.upstream:
            if evaluation[up].stale:
                ui.warn(f"{up} is stale ({evaluation[up].reason}); `ftctl run` would re-run it first")
        mine = evaluation[name]
        rec = st.record(self.state, name)
        if (
            not force
            and not stage.always_run
            and mine.status == st.SUCCEEDED
            and not mine.stale
            and self.alive(name)
        ):
            done = summary(stage, rec, self.ctx.backend) or "nothing changed"
            ui.info(f"{name}: up to date ({done}); --force runs it again")
            return {"stage": name, "status": "up to date", "outputs": rec["outputs"]}
        self.execute(stage)
        return {"stage": name, "status": rec["status"], "outputs": rec["outputs"]}

    def run_many(self, start: str | None, stop: str | None, force: bool) -> list[dict[str, Any]]:
        """`ftctl run`: the stages in order, skipping up-to-date ones."""
        ui = self.ctx.ui
        first = ORDER.index(get_stage(start).name) if start else 0
        last = ORDER.index(get_stage(stop).name) if stop else len(ORDER) - 1
        if first > last:
            raise StateError(f"--from {start} comes after --to {stop}")
        results = []
        for name in ORDER[first : last + 1]:
            stage = get_stage(name)
            rec = st.record(self.state, name)
            mine = evaluate(self.ctx, self.state)[name]
            if mine.status == st.SUCCEEDED and not mine.stale and not force:
                ui.info(f"- {name}: up to date")
                results.append({"stage": name, "status": "up to date"})
                continue
            for up in stage.needs_live:
                if not self.alive(up):
                    ui.info(f"> {up}: re-running (its endpoint is not running and {name} needs it)")
                    self.execute(get_stage(up))
                    results.append({"stage": up, "status": st.SUCCEEDED})
            if force:
                why = "forced"
            elif mine.status == st.SUCCEEDED:
                why = f"stale: {mine.reason}"
            elif rec["status"] == st.RUNNING:
                why = "re-attaching to the interrupted attempt"
            else:
                why = {st.PENDING: "never run", st.FAILED: "failed last time"}.get(mine.status, mine.status)
            ui.info(f"> {name}: running ({why})")
            self.execute(stage)
            results.append({"stage": name, "status": st.SUCCEEDED, "reason": why})
        return results

    def reset(self, name: str | None) -> list[str]:
        """Forget a stage and everything downstream (or everything, with name=None)."""
        names = ORDER if name is None else [get_stage(name).name, *downstream(name)]
        deploy = st.record(self.state, "deploy")
        if "deploy" in names and deploy["outputs"] and self.alive("deploy"):
            raise StateError(
                "the endpoint started by deploy is still running; resetting would orphan it",
                hint="run `ftctl teardown` first",
            )
        for n in names:
            self.state["stages"][n] = st.empty_record()
        self.save()
        return names
