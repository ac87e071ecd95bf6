"""The nine stages, their dependencies and fingerprints, and the rules for running them.

What a stage implementation provides is the `StageImpl` contract (ftctl.stages.contract); each backend
class (ftctl.backends.base.Backend) lists its nine implementations and the config keys they read there.
This module knows the stages by name, computes fingerprints and staleness (why a stage would run
again), and runs stages under the workspace lock, recording everything in the state file.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import relocation
from ftctl import state as st
from ftctl.errors import Detached, FtctlError, StageFailed, StateError, UpstreamNotReady
from ftctl.records import check_outputs
from ftctl.stages.contract import RunOptions, StageCall

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import StageImpl


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: tuple[str, ...]
    reads: tuple[str, ...]  # config key paths (or section prefixes) it uses on every backend; a backend
    # adds its own (Backend.reads)
    help: str
    always_run: bool = False  # an explicit `ftctl <stage>` runs it even when up to date
    needs_live: tuple[str, ...] = ()  # upstream stages whose long-lived resource must be up
    live: bool = False  # the stage keeps something running (an endpoint) that `alive` checks
    background: bool = False  # its work goes on without ftctl (a job started with --no-wait)
    ignores: tuple[str, ...] = ()  # config keys among `reads` that do not make the stage stale


STAGES: tuple[Stage, ...] = (
    Stage(
        "auth",
        (),
        ("backend",),
        "Connect to the backend: local MLflow stores or Azure ML.",
    ),
    Stage(
        "pick-model",
        ("auth",),
        ("model",),
        "Resolve the base model and read its metadata.",
        ignores=("model.cache_dir",),  # where a conversion is kept; the model folder's content is an input
    ),
    Stage(
        "check-compute",
        ("pick-model",),
        ("compute", "finetune.precision"),
        "Find or create compute; check allow/deny lists.",
    ),
    Stage(
        "prepare-data",
        ("auth",),
        ("data",),
        "Read, validate and write the splits (any chat format, as ultrachat records).",
    ),
    Stage(
        "submit",
        ("check-compute", "prepare-data"),
        ("finetune",),
        "Fine-tune the model (a job).",
        background=True,
    ),
    Stage("register", ("submit",), ("register",), "Register the fine-tuned model in the registry."),
    Stage(
        "deploy",
        ("register",),
        ("deploy",),
        "Serve the registered model behind an endpoint.",
        live=True,
        ignores=("deploy.ttl",),  # a new expiry applies to the next deploy; it redeploys nothing
    ),
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


def impl(ctx: Context, stage: Stage) -> StageImpl:
    return ctx.backend.stage(stage.name)


def reads(ctx: Context, stage: Stage) -> tuple[str, ...]:
    """The config keys `stage` reads on the context's backend."""
    return (*stage.reads, *ctx.backend.reads.get(stage.name, ()))


def fingerprint(ctx: Context, stage: Stage, state: dict[str, Any]) -> dict[str, Any]:
    files = impl(ctx, stage).inputs(ctx, state)
    selected = ctx.config.select(reads(ctx, stage))
    params = {key: value for key, value in selected.items() if key not in stage.ignores}
    return {
        "params": params,
        "inputs": {label: st.file_signature(Path(path)) for label, path in sorted(files.items())},
        "upstream": {up: st.stage_digest(st.record(state, up)) for up in stage.upstream},
    }


@dataclass
class Staleness:
    status: str  # the record's status; "interrupted" for a running record nobody is running
    stale: bool
    reason: str | None
    cause: str | None = None  # the stage where the staleness starts ("submit is stale: ...")
    down: bool = False  # a stage's live resource (deploy's endpoint) is not running


def output_signatures(ctx: Context, stage: Stage, outputs: dict[str, Any]) -> dict[str, str]:
    """Signatures of the files the stage produced (its `outs`), recorded when it succeeds."""
    files = impl(ctx, stage).output_files(ctx, outputs)
    return {label: st.file_signature(Path(path)) for label, path in sorted(files.items())}


def explain_outputs(recorded: dict[str, str], current: dict[str, str]) -> str | None:
    """Why a stage's own outputs are no longer what it produced (None when they are)."""
    reasons = []
    for label, signature in sorted(recorded.items()):
        now = current.get(label, "missing")
        if now == "missing":
            reasons.append(f"{label} is missing")
        elif now.startswith(("special:", "unreadable:")):  # a FIFO, a device: never opened
            kind = "not a regular file" if now.startswith("special:") else "unreadable"
            reasons.append(f"{label} is {kind} any more")
        elif now != signature:
            reasons.append(f"{label} changed since it was written")
    return "; ".join(reasons) or None


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


class StalenessCheck:
    """Status and staleness of the stages against the current config, files and processes.

    Each stage is evaluated once, when first asked (its upstream first), and again only after a stage it
    depends on ran (`forget`); file signatures are cached per process (ftctl.state.file_signature).
    """

    def __init__(self, ctx: Context, state: dict[str, Any], unattended: bool = False) -> None:
        """unattended: no ftctl holds the workspace lock, so a `running` record is not being run."""
        self.ctx = ctx
        self.state = state
        self.unattended = unattended
        self.results: dict[str, Staleness] = {}

    def __getitem__(self, name: str) -> Staleness:
        if name not in self.results:
            self.results[name] = self._check(get_stage(name))
        return self.results[name]

    def all(self) -> dict[str, Staleness]:
        return {name: self[name] for name in ORDER}

    def forget(self, name: str) -> None:
        """`name` ran: it and everything downstream must be evaluated again."""
        for n in [name, *downstream(name)]:
            self.results.pop(n, None)

    def alive(self, stage: Stage) -> bool:
        rec = st.record(self.state, stage.name)
        return bool(impl(self.ctx, stage).alive(self.ctx, rec.get("outputs") or {}))

    def _check(self, stage: Stage) -> Staleness:
        rec = st.record(self.state, stage.name)
        status = rec["status"]
        # A job goes on without its ftctl (`submit --no-wait`, a Ctrl-C); a live stage's server does too,
        # but not the stage: with nobody holding the lock, a `running` deploy is an interrupted one.
        carries_on = stage.background and self.alive(stage)
        if status == st.RUNNING and self.unattended and not carries_on:
            ended = self.ctx.backend.ended_outcome(stage.name, rec.get("outputs") or {})
            if ended is not None:  # a job started with --no-wait that ended on its own
                outcome, said = ended
                return Staleness(outcome, False, f"{said}; `ftctl {stage.name}` records the result")
            return Staleness("interrupted", False, f"its ftctl stopped; `ftctl {stage.name}` resumes it")
        if status != st.SUCCEEDED:
            return Staleness(status, False, None)
        reason, cause = self._upstream_reason(stage)
        if reason is None:
            reason = explain_change(rec.get("fingerprint"), fingerprint(self.ctx, stage, self.state))
            outputs = rec.get("outputs") or {}
            reason = reason or explain_outputs(
                rec.get("output_signatures") or {}, output_signatures(self.ctx, stage, outputs)
            )
            reason = reason or self.ctx.backend.outputs_gone(stage.name, outputs)
            cause = stage.name if reason else None
        if reason and cause and cause != stage.name and not reason.startswith(f"{cause} is "):
            reason = f"{cause} is stale: {reason}"
        down = stage.live and not self.alive(stage)
        return Staleness(status, reason is not None, reason, cause, down)

    def _upstream_reason(self, stage: Stage) -> tuple[str | None, str | None]:
        for up in stage.upstream:
            up_standing = self[up]
            if up_standing.status != st.SUCCEEDED:
                return f"{up} is {up_standing.status}", up
            if up_standing.stale:
                return up_standing.reason, up_standing.cause
        return None, None


def staleness(ctx: Context, state: dict[str, Any], unattended: bool = False) -> dict[str, Staleness]:
    """Status and staleness of every stage against the current config, files and processes."""
    return StalenessCheck(ctx, state, unattended).all()


def summary(ctx: Context, stage: Stage, rec: dict[str, Any]) -> str:
    outputs = rec.get("outputs") or {}
    if rec.get("status") == st.FAILED and rec.get("error"):
        # the message, whole (the table fits it to the terminal at a word); never the error's class
        lines = str(rec["error"].get("message") or "failed").strip().splitlines()
        return lines[0] if lines else "failed"
    return impl(ctx, stage).summary(outputs) if outputs else ""


# --- running ----------------------------------------------------------------------------------------


class Runner:
    """Runs stages under the workspace lock the caller holds, recording everything in the state file."""

    def __init__(
        self,
        ctx: Context,
        options: RunOptions | None = None,
        check_backend: bool = True,
        forgetting: Collection[str] = (),
    ) -> None:
        """check_backend=False (reset) accepts a workspace that holds another backend's run; the records
        of the stages in `forgetting` (reset's) are not checked, so that a damaged one can be forgotten."""
        self.ctx = ctx
        self.options = options or RunOptions()
        self.store = ctx.state_store
        self.state = self.store.load(forgetting)
        backend = self.state.get("backend")
        if check_backend and backend and backend != ctx.backend_name:
            raise StateError(
                f"workspace {ctx.workspace} holds a {backend} run, but the backend is now {ctx.backend_name}",
                hint=f"pass --backend {backend}, use another --workspace, or `ftctl reset --all`",
            )
        if check_backend:
            from ftctl.config import check_backend_settings

            check_backend_settings(ctx.config)
        self.state["backend"] = ctx.backend_name
        if not relocation.identity(self.state):  # a workspace's first run: who it is, and where
            relocation.stamp(self.state, ctx.workspace)
        if not self.state.get("run_id"):
            self.state["run_id"] = st.new_run_id()
        for name in ORDER:  # the state file lists every stage, pending ones too
            st.record(self.state, name)

    def save(self) -> None:
        self.store.save(self.state)

    def alive(self, name: str) -> bool:
        rec = st.record(self.state, name)
        return bool(impl(self.ctx, get_stage(name)).alive(self.ctx, rec.get("outputs") or {}))

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

    def _start_attempt(self, stage: Stage, rec: dict[str, Any]) -> None:
        # What the previous attempt left running (deploy's endpoint) goes before its record does:
        # forgetting it first would leave it running unrecorded.
        if rec.get("outputs"):
            impl(self.ctx, stage).retire(self.ctx, rec["outputs"])
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

    def execute(self, stage: Stage) -> dict[str, Any]:
        """Run one stage now (re-attaching to what an interrupted attempt started)."""
        self.require_upstream(stage)
        rec = st.record(self.state, stage.name)
        previous: dict[str, Any] = {}
        if not (rec["status"] == st.RUNNING and rec.get("outputs")):
            previous = dict(rec.get("outputs") or {})
            self._start_attempt(stage, rec)

        def checkpoint(outputs: dict[str, Any]) -> None:
            rec["outputs"] = dict(outputs)
            self.save()

        call = StageCall(
            stage.name, self.state, self.options, dict(rec.get("outputs") or {}), checkpoint, previous
        )
        try:
            outputs = impl(self.ctx, stage).run(self.ctx, call)
        except Detached as detached:
            self.ctx.ui.info(f"  {detached}")
            return {"status": st.RUNNING, **rec["outputs"]}
        except KeyboardInterrupt:
            if rec.get("outputs"):
                self.ctx.ui.info(
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
            known = self.ctx.backend.explain_error(exc)
            if known is not None:  # a library's error the backend recognises: one line of ftctl's
                self._fail(rec, type(known).__name__, known.message)
                raise known from exc  # its hint says what to do (the store, not the stage, is at fault)
            self._fail(rec, type(exc).__name__, str(exc))
            raise StageFailed(
                f"{stage.name} failed: unexpected {type(exc).__name__}: {exc}",
                hint=f"re-run it with `ftctl {stage.name}` (add --debug for the traceback)",
            ) from exc
        problem = check_outputs(stage.name, outputs)
        if problem is not None:  # a bug of ftctl's, not the user's: recorded, the stage did not succeed
            self._fail(rec, "InvalidOutputs", problem)
            raise StageFailed(
                f"{stage.name} returned outputs that cannot be recorded: {problem}",
                hint=f"please report this; re-run it with `ftctl {stage.name}` (add --debug for details)",
            )
        signatures = output_signatures(self.ctx, stage, outputs)
        rec.update(
            status=st.SUCCEEDED,
            ended_at=st.now_iso(),
            outputs=outputs,
            output_signatures=signatures,
            error=None,
        )
        self.save()
        return outputs

    def _fail(self, rec: dict[str, Any], kind: str, message: str) -> None:
        rec.update(status=st.FAILED, ended_at=st.now_iso(), error={"type": kind, "message": message})
        self.save()

    def dry_run(self, name: str) -> dict[str, Any]:
        """Show what the stage would create; nothing is sent that creates anything, nothing recorded.

        Needs no earlier stage: a stage whose upstream has not run plans from the configuration, with
        placeholders for what only the service can tell. Takes no lock and writes nothing."""
        call = StageCall(name, self.state, replace(self.options, dry_run=True))
        outputs = impl(self.ctx, get_stage(name)).run(self.ctx, call)
        return {"stage": name, "status": "dry run", "outputs": outputs}

    def dry_run_many(self, start: str | None, stop: str | None) -> list[dict[str, Any]]:
        """`ftctl run --dry-run`: every stage's dry run, in order."""
        results = []
        for name in self._range(start, stop):
            self.ctx.ui.info(f"> {name} (dry run)")
            results.append(self.dry_run(name))
        self.ctx.ui.info("dry run: nothing was sent that creates anything, and nothing was recorded")
        return results

    def _range(self, start: str | None, stop: str | None) -> list[str]:
        first = ORDER.index(get_stage(start).name) if start else 0
        last = ORDER.index(get_stage(stop).name) if stop else len(ORDER) - 1
        if first > last:
            raise StateError(f"--from {start} comes after --to {stop}")
        return ORDER[first : last + 1]

    def run_one(self, name: str) -> dict[str, Any]:
        """`ftctl <stage>`: run it unless it is up to date (and its resource, if any, is up)."""
        if self.options.dry_run:
            return self.dry_run(name)
        stage = get_stage(name)
        ui = self.ctx.ui
        standing = StalenessCheck(self.ctx, self.state)
        for up in stage.upstream:
            if standing[up].stale:
                ui.warn(f"{up} is stale ({standing[up].reason}); `ftctl run` would re-run it first")
        mine = standing[name]
        rec = st.record(self.state, name)
        up_to_date = mine.status == st.SUCCEEDED and not mine.stale and not mine.down
        if up_to_date and not self.options.force and not stage.always_run:
            done = summary(self.ctx, stage, rec) or "nothing changed"
            ui.info(f"{name}: up to date ({done}); --force runs it again")
            return {"stage": name, "status": "up to date", "outputs": rec["outputs"]}
        self.execute(stage)
        return {"stage": name, "status": rec["status"], "outputs": rec["outputs"]}

    def run_many(self, start: str | None, stop: str | None) -> list[dict[str, Any]]:
        """`ftctl run`: the stages in order, skipping up-to-date ones.

        A live stage whose resource is down (deploy's endpoint) runs again, except when the range ends
        with an up-to-date teardown that took it down and the range does not start at it: a full
        `ftctl run` after a full `ftctl run` does nothing, while `--to deploy`, `--to score` and
        `--from deploy` bring the endpoint back up.
        """
        names = self._range(start, stop)
        standing = StalenessCheck(self.ctx, self.state)
        results: list[dict[str, Any]] = []
        warmed = False
        for index, name in enumerate(names):
            stage = get_stage(name)
            torn_down = (
                "teardown" in names
                and name != names[0]
                and standing["teardown"].status == st.SUCCEEDED
                and not standing["teardown"].stale
            )
            why = self._why_run(standing[name], torn_down)
            if why is None:
                note = " (torn down by teardown)" if standing[name].down else ""
                self.ctx.ui.info(f"- {name}: up to date{note}")
                results.append({"stage": name, "status": "up to date"})
                continue
            if not warmed:
                self.ctx.backend.warm_up(names[index:])
                warmed = True
            results.extend(self._bring_up_live_upstream(stage, standing))
            self.ctx.ui.info(f"> {name}: running ({why})")
            self.execute(stage)
            standing.forget(name)
            results.append({"stage": name, "status": st.SUCCEEDED, "reason": why})
        return results

    def _why_run(self, mine: Staleness, torn_down: bool) -> str | None:
        """Why `ftctl run` runs a stage (None: it is up to date)."""
        if self.options.force:
            return "forced"
        if mine.status == st.SUCCEEDED:
            if mine.stale:
                return f"stale: {mine.reason}"
            return "its endpoint is down" if mine.down and not torn_down else None
        if mine.status in (st.RUNNING, "interrupted"):
            return "re-attaching to the interrupted attempt"
        if mine.status == "completed":
            return "recording the job that ended while no ftctl followed it"
        return {st.PENDING: "never run", st.FAILED: "failed last time"}.get(mine.status, mine.status)

    def _bring_up_live_upstream(self, stage: Stage, standing: StalenessCheck) -> list[dict[str, Any]]:
        results = []
        for up in stage.needs_live:
            if not self.alive(up):
                self.ctx.ui.info(
                    f"> {up}: re-running (its endpoint is not running and {stage.name} needs it)"
                )
                self.execute(get_stage(up))
                standing.forget(up)
                results.append({"stage": up, "status": st.SUCCEEDED})
        return results

    def reset(self, name: str | None) -> list[str]:
        """Forget a stage and everything downstream (or everything, with name=None)."""
        from ftctl.records import check_record

        names = forgotten_by(name)
        # A damaged record names nothing ftctl can act on: what it started is in the live records
        # (`ftctl status` names it, `ftctl reset --all` stops it).
        sound = [n for n in names if check_record(n, st.record(self.state, n)) is None]
        deploy = st.record(self.state, "deploy")
        if "deploy" in sound and deploy["outputs"] and self.alive("deploy"):
            raise StateError(
                "the endpoint started by deploy is still running; resetting would orphan it",
                hint="run `ftctl teardown` first",
            )
        for n in sound:  # what they started (submit's training job) stops before its record goes
            outputs = st.record(self.state, n).get("outputs")
            if outputs:
                impl(self.ctx, get_stage(n)).retire(self.ctx, outputs)
        for n in names:
            self.state["stages"][n] = st.empty_record()
        self.save()
        return names


# --- whole-workspace commands -----------------------------------------------------------------------


def status_report(ctx: Context) -> dict[str, Any]:
    """What `ftctl status` shows: every stage's record, whether (and why) it is stale, whether its
    endpoint is down, and whether a `running` stage was interrupted."""
    try:
        state = ctx.state_store.load()
    except StateError as exc:
        live = ctx.backend.live(None)
        if live:  # the one thing a damaged state must not hide
            running = "; ".join(item["description"] for item in live)
            exc.hint = f"still running: {running} (`ftctl reset --all` stops them); {exc.hint}"
        raise
    standing = staleness(ctx, state, unattended=st.lock_is_free(ctx.workspace))
    stages = []
    for stage in STAGES:
        rec = st.record(state, stage.name)
        ev = standing[stage.name]
        shown = "down" if ev.down else ev.status
        stages.append(
            {
                "name": stage.name,
                "status": shown,
                "stale": ev.stale,
                "stale_reason": ev.reason if ev.stale else None,
                "note": None if ev.stale else ev.reason,
                "attempt": rec.get("attempt", 0),
                "started_at": rec.get("started_at"),
                "ended_at": rec.get("ended_at"),
                "outputs": rec.get("outputs") or {},
                "error": rec.get("error"),
                "summary": _status_summary(ctx, stage, rec, ev),
            }
        )
    return {
        "workspace": str(ctx.workspace),
        "backend": state.get("backend") or ctx.backend_name,
        "run_id": state.get("run_id"),
        "stages": stages,
        "live": ctx.backend.live(state),
    }


def _status_summary(ctx: Context, stage: Stage, rec: dict[str, Any], ev: Staleness) -> str:
    if ev.status == "interrupted":
        return f"interrupted: `ftctl {stage.name}` resumes it"
    if rec.get("status") == st.RUNNING and ev.reason:  # a job that ended with nobody following it
        return ev.reason
    if ev.down:
        name = (rec.get("outputs") or {}).get("endpoint_name") or "the endpoint"
        return f"{name} is down: `ftctl {stage.name}` or `ftctl run --to score` starts it again"
    text = summary(ctx, stage, rec)
    if stage.live and ev.status == st.SUCCEEDED:
        from ftctl.ttl import endpoint_record, uptime

        record = endpoint_record(ctx.state_store.load())
        if record:  # first: what costs money stays in view when the table is fitted to the terminal
            text = f"{uptime(record)}; {text}"
    return text


def forgotten_by(name: str | None) -> list[str]:
    """The stages `ftctl reset NAME` forgets: NAME and everything downstream (every stage for None)."""
    return list(ORDER) if name is None else [get_stage(name).name, *downstream(name)]


def reset(ctx: Context, name: str | None) -> list[str]:
    """`ftctl reset STAGE|--all` under the lock the caller holds. Never leaves a process ftctl started
    running unknown: --all stops every live job and endpoint first (also when the state file is
    unreadable, which is then moved aside as state.json.corrupt); resetting submit stops its job."""
    from ftctl.stages.contract import LIVE_KINDS

    store, backend = ctx.state_store, ctx.backend
    if name is None:
        for stopped in backend.stop_live(LIVE_KINDS):
            ctx.ui.info(f"stopped {stopped}")
        try:
            store.load()
        except StateError:
            store.path.replace(store.path.with_suffix(".json.corrupt"))
            ctx.ui.info("moved the unreadable state file aside (state.json.corrupt); starting over")
            return list(ORDER)
    forgetting = [] if name is None else forgotten_by(name)  # --all: a damaged state was moved aside above
    names = Runner(ctx, check_backend=False, forgetting=forgetting).reset(name)
    if name is not None and "submit" in names:
        for stopped in backend.stop_live(("job",)):
            ctx.ui.info(f"stopped {stopped}")
    return names


def restore_backup(ctx: Context) -> list[str]:
    """`ftctl reset --restore-backup`: the previous state file back; what it does not record (a job
    or endpoint started since) is stopped, so nothing runs that ftctl no longer knows about."""
    from ftctl.stages.contract import LIVE_KINDS

    ctx.state_store.restore_backup()
    restored = ctx.state_store.load()
    return ctx.backend.stop_live(LIVE_KINDS, unrecorded_in=restored)
