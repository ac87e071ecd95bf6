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
    from ftctl.backends.local.checkpoints import Checkpoint
    from ftctl.backends.local.jobs import Job
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall


class _Follower:
    """Shows a job's events: a progress bar (step, loss, tokens/s, ETA) plus lines that stay."""

    def __init__(self, ctx: Context, bar: Any) -> None:
        self.ctx = ctx
        self.bar = bar
        self.started: float | None = None  # the job's "start" event time: the ETA is the job's own pace
        self.first_step = 0  # the step this attempt started from (a resumed job's checkpoint)
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
            done = step - self.first_step
            if self.started is not None and event.get("time") and done > 0 and total:
                eta = (event["time"] - self.started) / done * (total - step)
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
        elif kind == "resume":
            self.first_step = int(event.get("step") or 0)
            self.bar.log(f"  resumed from step {event.get('step')} of {event.get('max_steps')}")
        elif kind == "selected":
            self.bar.log(f"  selected the checkpoint of step {event.get('step')}: the lowest eval_loss")
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


def _job_spec(ctx: Context, call: StageCall, job_id: str) -> dict[str, Any]:
    """What the job `job_id` runs: the model, the data, the parameters, the command."""
    from ftctl.backends.local.launch import launch_command

    ws = local(ctx)
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
    return {**spec, "resume_key": _resume_key(spec)}


def _resume_key(spec: dict[str, Any]) -> str:
    """What a checkpoint of the job depends on: the model, the data's contents, the parameters and the
    command. A failed job resumes only while the job submit would start now has the same key."""
    from ftctl.state import digest, file_signature

    files = {
        key: file_signature(Path(spec[key])) if spec.get(key) else None for key in ("train_file", "eval_file")
    }
    keys = ("model_path", "params", "device", "command")
    return digest({**{key: spec.get(key) for key in keys}, **files})


def _start_job(ctx: Context, call: StageCall) -> Job:
    from ftctl.backends.local.jobs import Job, new_job_id

    _refuse_second_trainer(ctx)
    spec = _job_spec(ctx, call, new_job_id())
    name = spec["display_name"]
    job = Job.create(local(ctx).jobs_dir, spec)
    # Record the job before starting it: an ftctl killed in between leaves a recorded job that the
    # next `ftctl submit` starts or re-attaches to, never one training unrecorded while a second starts.
    started = {"job_id": job.id, "job_dir": str(job.dir), "display_name": name}
    call.checkpoint(started)
    process = job.start()
    call.checkpoint({**started, "pid": process["pid"], "process": process})
    ctx.ui.info(f"  job {job.id} started (pid {process['pid']}); log: {job.log_path}")
    return job


def _resumable(ctx: Context, call: StageCall, outputs: dict[str, Any]) -> tuple[Job, Checkpoint] | None:
    """The failed job of `outputs` and its last complete checkpoint, when the job submit would start
    now is the same (model, data, parameters, command) and `--restart` was not given."""
    from ftctl.backends.local import checkpoints, procs
    from ftctl.backends.local.jobs import FAILED, trainer_error_type

    if not outputs.get("job_dir"):
        return None
    job = _job(outputs)
    if job.status().get("state") != FAILED:
        return None
    # The supervisor records the end as its last act and exits a moment later; a killed trainer forked
    # by the warm process is reaped by it. A submit right after the record (CI once caught `run` at that
    # moment: it re-attached to the failed job instead of resuming it) waits for them, briefly.
    if not all(procs.wait_ended(ident, 5.0) for ident in job.processes().values()):
        return None
    if trainer_error_type(job) == "TrainingDiverged":  # it would diverge again
        return None
    found = checkpoints.latest(job.dir / "checkpoints")
    if found is None:
        return None
    if call.options.restart or call.options.force:
        ctx.ui.info(f"  starting over (--restart): the checkpoints of job {job.id} are deleted")
        checkpoints.remove_all(job.dir / "checkpoints")
        return None
    spec = job.spec()
    if spec.get("resume_key") != _resume_key(_job_spec(ctx, call, job.id)):
        ctx.ui.info(f"  job {job.id} has a checkpoint, but the model, data or parameters changed: a new job")
        return None
    return job, found


def _resume(ctx: Context, call: StageCall, job: Job, found: Checkpoint) -> int:
    """Start the failed `job` again: its trainer resumes from its last complete checkpoint. Returns the
    offset in its events from which this attempt's events follow."""
    _refuse_second_trainer(ctx)
    offset = job.reopen({"type": "resume_requested", "step": found.step, "max_steps": found.max_steps})
    started = {"job_id": job.id, "job_dir": str(job.dir), "display_name": job.spec().get("display_name")}
    call.checkpoint(started)
    process = job.start()
    call.checkpoint({**started, "pid": process["pid"], "process": process})
    ctx.ui.info(
        f"  resuming job {job.id} from its checkpoint at step {found.step} of {found.max_steps} "
        f"(pid {process['pid']}; `--restart` starts over); log: {job.log_path}"
    )
    return offset


def run(ctx: Context, call: StageCall) -> Outputs:
    from ftctl.backends.local.jobs import COMPLETED, describe_failure

    recorded = call.recorded
    offset = 0
    resumable = _resumable(ctx, call, recorded or call.previous)
    if resumable is not None:  # a failed job (killed, or every process lost) with a checkpoint
        job, found = resumable
        offset = _resume(ctx, call, job, found)
    elif recorded.get("job_dir"):
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
        final = job.follow(_Follower(ctx, bar), offset=offset)
    if final.get("state") != COMPLETED:
        raise StageFailed(describe_failure(job, final) + _checkpoint_note(job.dir, resumes=True))
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
        "select": result.get("select"),
        "selected_step": result.get("selected_step"),
        "final_eval_loss": result.get("final_eval_loss"),
        "params": job.spec().get("params"),
        "template_check": result.get("template_check"),
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
    note = _checkpoint_note(Path(outputs["job_dir"]), resumes=True)
    return "failed", f"job {outputs.get('job_id')} failed: {status.get('error') or 'see `ftctl logs`'}{note}"


def _checkpoint_note(job_dir: Path, resumes: bool = False) -> str:
    """'; last checkpoint: step 4 of 8' (what `ftctl status` shows of a job's checkpoints), or ''."""
    from ftctl.backends.local import checkpoints

    last = checkpoints.latest(job_dir / "checkpoints")
    if last is None:
        return ""
    return f"; last checkpoint: {last.describe()}" + (" (`ftctl submit` resumes from it)" if resumes else "")


def alive(ctx: Context, outputs: Outputs) -> bool:
    """Whether the job is still training (asked of a `running` record that no ftctl is following)."""
    if not outputs.get("job_dir"):
        return False
    return _job(outputs).running()


def summary(outputs: dict[str, Any]) -> str:
    text = f"{outputs.get('job_id')}"
    if outputs.get("job_dir") and outputs.get("steps") is None:  # still training: how far it is saved
        text += _checkpoint_note(Path(outputs["job_dir"]))
    elif outputs.get("selected_step") is not None and outputs.get("selected_step") != outputs.get("steps"):
        text += f", selected step {outputs['selected_step']} of {outputs.get('steps')}"
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
