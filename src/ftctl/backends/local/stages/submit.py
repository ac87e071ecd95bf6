"""submit: fine-tune the picked model on the prepared data, as a job.

Parameters follow the notebook: the `finetune` section, overridden by the model's
model_specific_defaults (unless finetune.use_model_defaults is false or the key was given with --set /
an FTCTL_ variable). Local: a detached job (jobs.py: a supervisor and its trainer, the transformers +
peft trainer or torchrun for several GPUs). The job id is recorded before the job starts, so re-running
`ftctl submit` re-attaches to a running job instead of starting a second one; and while any training
job of the workspace runs (recorded under <workspace>/live, even if the state file lost it), no second
one starts. A failed job is one line: its cause (the trainer's error, or the signal that killed it) and
the log's path; the traceback stays in the log.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.backends.local.backend import local
from ftctl.errors import Detached, StageFailed
from ftctl.stages.shared import data_file, display_name, finetune_params
from ftctl.stages.shared import training_inputs as inputs

if TYPE_CHECKING:
    from ftctl.backends.local.jobs import Job
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


class _Follower:
    """Shows a job's events: a progress bar (step, loss, tokens/s, ETA) plus lines that stay."""

    def __init__(self, ctx: Context, bar: Any) -> None:
        self.ctx = ctx
        self.bar = bar
        self.started: float | None = None  # the job's "start" event time: the ETA is the job's own pace
        bar.update(info="starting the job (loading the model and data)", quiet=True)

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "start":
            self.started = event.get("time")
            self.bar.set_total(event.get("max_steps"))
            self.bar.log(
                f"  {event.get('train_examples')} training conversations ({event.get('dropped_examples')} "
                f"dropped), {event.get('max_steps')} steps on {event.get('device')}"
            )
        elif kind == "progress":
            step, total = event.get("step") or 0, event.get("max_steps") or None
            eta = None
            if self.started is not None and event.get("time") and step and total:
                eta = (event["time"] - self.started) / step * (total - step)
            self.bar.update(
                step,
                total=total,
                eta_s=eta,
                info=f"loss {event.get('loss', float('nan')):.4f}  lr {event.get('learning_rate', 0):.2e}"
                f"  {event.get('tokens_per_second', 0):,.0f} tok/s",
            )
        elif kind == "eval":
            self.bar.log(
                f"  eval_loss {event.get('eval_loss'):.4f}  perplexity {event.get('perplexity'):.2f}"
                + (f"  (step {event['step']})" if event.get("step") is not None else "")
            )
        elif kind == "phase":
            self.bar.update(info=str(event.get("message")), quiet=True)
        elif kind == "warning":
            self.ctx.ui.warn(str(event.get("message")))


def _job(recorded: dict[str, Any]) -> Job:
    from ftctl.backends.local.jobs import Job

    return Job(Path(recorded["job_dir"]), supervisor=recorded.get("process"))


def retire(ctx: Context, outputs: dict[str, Any]) -> None:
    """Before submit runs again (--force, or stale): stop the job the previous attempt started if it
    still trains, so that two trainers never run at once. Identity-checked: a reused pid is not it."""
    if not outputs.get("job_dir"):
        return
    job = _job(outputs)
    if job.running():
        ctx.ui.info(f"  stopping the previous training job {job.id}")
        job.stop()


def _refuse_second_trainer(ctx: Context) -> None:
    from ftctl.backends.local import live

    for resource in live.live_resources(local(ctx).root):
        if resource.kind == live.JOB:
            raise StageFailed(
                f"{resource.describe()} is still running in this workspace, and the state file does not "
                "record it; ftctl starts no second trainer while one runs",
                hint="wait for it to end, or stop it with `ftctl reset submit`",
            )


def _start_job(ctx: Context, call: StageCall) -> Job:
    from ftctl.backends.local.jobs import Job, new_job_id
    from ftctl.backends.local.launch import launch_command

    ws = local(ctx)
    _refuse_second_trainer(ctx)
    recorded, data = call.upstream, ctx.cfg.data
    model, compute = recorded.pick_model, recorded.check_compute
    params, notes = finetune_params(ctx, recorded)
    for note in notes:
        ctx.ui.info(f"  {note}")
    if params["precision"] == "auto":
        params["precision"] = compute.precision or "32"
    model_name = model.need("name")
    experiment = f"chat_completion_{model_name.split('/')[-1]}"
    gpus = compute.gpus_per_node or 0
    name = display_name(model_name, params, gpus)
    job_id = new_job_id()
    command = launch_command(
        ws.jobs_dir / job_id,
        num_gpus=gpus,
        apply_deepspeed=params["apply_deepspeed"],
        deepspeed_stage=params["deepspeed_stage"],
        python=sys.executable,
    )
    spec = {
        "job_id": job_id,
        "display_name": name,
        "model_path": model.need("path"),
        "train_file": data_file(ctx, recorded, data.train_split, "data.train_split", required=True),
        "eval_file": data_file(ctx, recorded, data.test_split, "data.test_split", required=False),
        "params": params,
        "device": compute.device or "cpu",
        # The trainer creates the experiment (it imports MLflow anyway), its artifacts in the workspace.
        "mlflow": {
            "tracking_uri": ws.tracking_uri,
            "experiment": experiment,
            "artifact_location": ws.experiment_location(experiment),
            "run_name": name,
        },
        "command": command,
        "workspace": str(ws.root),
    }
    job = Job.create(ws.jobs_dir, spec)
    # Record the job before starting it: an ftctl killed in between leaves a recorded job that the
    # next `ftctl submit` starts or re-attaches to, never one training unrecorded while a second starts.
    started = {"job_id": job.id, "job_dir": str(job.dir), "display_name": name}
    call.checkpoint(started)
    process = job.start()
    call.checkpoint({**started, "pid": process["pid"], "process": process})
    ctx.ui.info(f"  job {job.id} started (pid {process['pid']}); log: {job.log_path}")
    return job


def run(ctx: Context, call: StageCall) -> Outputs:
    from ftctl.backends.local.jobs import COMPLETED, describe_failure

    recorded = call.recorded
    if recorded.get("job_dir"):
        job = _job(recorded)
        if job.never_started():  # the attempt that recorded it was interrupted before starting it
            ctx.ui.info(f"  re-attaching to job {job.id} (its start was interrupted: starting it now)")
            _refuse_second_trainer(ctx)
            process = job.start()
            call.checkpoint({**recorded, "pid": process["pid"], "process": process})
        else:
            ctx.ui.info(f"  re-attaching to job {job.id}")
    else:
        _plan_first(ctx, call)
        job = _start_job(ctx, call)
    if not call.options.wait:
        raise Detached(f"job {job.id} is running; follow it with `ftctl submit` or check `ftctl status`")
    with ctx.ui.progress("training", unit="steps") as bar:
        final = job.follow(_Follower(ctx, bar))
    if final.get("state") != COMPLETED:
        raise StageFailed(describe_failure(job, final))
    result = job.result()
    eval_loss = result.get("eval_loss")
    ctx.ui.info(
        f"  done: train_loss {result.get('train_loss'):.4f}, "
        f"eval_loss {'n/a' if eval_loss is None else format(eval_loss, '.4f')}, "
        f"{result.get('tokens_per_second', 0):,.0f} tok/s; model in {result.get('model_dir')}"
    )
    outputs = {
        "job_id": job.id,
        "job_dir": str(job.dir),
        "display_name": job.spec().get("display_name"),
        "mlflow_run_id": result.get("mlflow_run_id"),
        "model_dir": result.get("model_dir"),
        "train_loss": result.get("train_loss"),
        "eval_loss": result.get("eval_loss"),
        "perplexity": result.get("perplexity"),
        "train_tokens": result.get("train_tokens"),
        "tokens_per_second": result.get("tokens_per_second"),
        "steps": result.get("steps"),
        "params": job.spec().get("params"),
    }
    return _with_stop_check(ctx, call, outputs, result)


def _plan_first(ctx: Context, call: StageCall) -> None:
    """The pre-flight plan (`ftctl plan` without a new calibration) before a new job: refuses what
    cannot work, warns about what likely goes wrong (`submit --no-plan` skips it)."""
    if call.options.plan:
        from ftctl.backends.local.preflight import preflight

        preflight(ctx, call)


def _with_stop_check(ctx: Context, call: StageCall, outputs: Outputs, result: dict[str, Any]) -> Outputs:
    """After training: whether the model ends its turn (a few greedy replies on held-out prompts), as the
    trainer checked it on the model it saved (else checked here, on a reload of that model)."""
    from ftctl.backends.local.evaluate import check_model_stops
    from ftctl.evaluation import StopCheck

    hf_dir = result.get("hf_model_dir") or result.get("model_dir")
    found = result.get("stop_check")
    if hf_dir:
        checked = StopCheck(**found) if isinstance(found, dict) else None
        outputs["stop_check"] = check_model_stops(ctx, call.upstream, Path(hf_dir), checked)
    return outputs


def output_files(ctx: Context, outputs: Outputs) -> dict[str, Path]:
    """The job's model folder (what register registers)."""
    return {"model folder": Path(outputs["model_dir"])} if outputs.get("model_dir") else {}


def ended_outcome(outputs: dict[str, Any]) -> tuple[str, str] | None:
    """How a job nobody followed (`submit --no-wait`) ended, once it has: ("completed", ...) or
    ("failed", its error); None while it runs, or without a job."""
    from ftctl.backends.local.jobs import COMPLETED, TERMINAL

    if not outputs.get("job_dir"):
        return None
    status = _job(outputs).status()
    if status.get("state") not in TERMINAL:
        return None
    if status["state"] == COMPLETED:
        return COMPLETED, f"job {outputs.get('job_id')} completed"
    return "failed", f"job {outputs.get('job_id')} failed: {status.get('error') or 'see `ftctl logs`'}"


def alive(ctx: Context, outputs: Outputs) -> bool:
    """Whether the job is still training (asked of a `running` record that no ftctl is following)."""
    if not outputs.get("job_dir"):
        return False
    return _job(outputs).running()


def summary(outputs: dict[str, Any]) -> str:
    text = f"{outputs.get('job_id')}"
    for name in ("eval_loss", "train_loss"):
        loss = outputs.get(name)
        if isinstance(loss, float):
            text = f"{text}, {name.replace('_', ' ')} {loss:.3f}"
            break
    return text + _stop_note(outputs)


def _stop_note(outputs: dict[str, Any]) -> str:
    """The end-of-turn check's warning, for `ftctl status` (nothing when the model stops)."""
    from ftctl.evaluation import STOP_MESSAGE

    check = outputs.get("stop_check")
    if isinstance(check, dict) and check.get("ok") is False:
        return f"; {check.get('message') or STOP_MESSAGE}"
    return ""


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
