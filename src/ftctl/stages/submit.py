"""submit: fine-tune the picked model on the prepared data, as a job.

Parameters follow the notebook: the `finetune` section, overridden by the model's
model_specific_defaults (unless finetune.use_model_defaults is false or the key was given with --set /
an FTCTL_ variable). Local: a detached job process (jobs.py) running the transformers + peft trainer,
or accelerate for several GPUs. The job id is recorded before waiting, so re-running `ftctl submit`
re-attaches to a running job instead of starting a second one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.config import FinetuneSection
from ftctl.errors import ConfigError, StageFailed, UsageError
from ftctl.pipeline import Detached

if TYPE_CHECKING:
    from ftctl.backends.local.jobs import Job
    from ftctl.context import Context


def _coerce(value: Any) -> Any:
    """Azure tags carry every value as a string; "true"/"false" are the component's booleans."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def finetune_params(ctx: Context) -> tuple[dict[str, Any], list[str]]:
    """The effective finetune parameters and notes on what the model's defaults changed or dropped."""
    cfg = ctx.cfg.finetune
    params = cfg.model_dump()
    notes: list[str] = []
    defaults = ctx.outputs("pick-model").get("model_specific_defaults") or {}
    if cfg.use_model_defaults:
        for key, value in sorted(defaults.items()):
            if key not in FinetuneSection.model_fields:
                notes.append(f"dropped model default {key}={value!r} (not a finetune parameter)")
            elif f"finetune.{key}" in ctx.config.explicit:
                notes.append(f"kept finetune.{key}={params[key]!r} over the model default {value!r}")
            else:
                params[key] = _coerce(value)
                notes.append(f"model default {key}={value!r}")
        try:
            params = FinetuneSection.model_validate(params).model_dump()
        except Exception as exc:
            raise ConfigError(f"the model's model_specific_defaults are invalid: {exc}") from None
    return params, notes


def display_name(model: str, params: dict[str, Any], gpus_per_node: int) -> str:
    """The notebook's pipeline display name."""
    batch = (
        params["per_device_train_batch_size"]
        * params["gradient_accumulation_steps"]
        * max(gpus_per_node, 1)
        * params["num_nodes"]
    )
    deepspeed = f"ds{params['deepspeed_stage']}" if params["apply_deepspeed"] else "nods"
    lora = "lora" if params["apply_lora"] else "nolora"
    return (
        f"{model.split('/')[-1]}-ultrachat-bs{batch}-{params['lr_scheduler_type']}-{deepspeed}-{lora}"
        f"-save_limit{params['save_total_limit']}-seqlen{params['max_seq_length']}"
    )


def _data_file(ctx: Context, split: str, required: bool) -> str | None:
    files = ctx.outputs("prepare-data").get("files") or {}
    if split in files:
        return str(files[split]["path"])
    if required:
        raise UsageError(
            f"the prepared data has no {split!r} split (data.train_split); it has: {', '.join(files)}",
            hint="set data.train_split, then run `ftctl prepare-data`",
        )
    return None


def inputs(ctx: Context, state: dict[str, Any]) -> dict[str, Path]:
    files = state.get("stages", {}).get("prepare-data", {}).get("outputs", {}).get("files") or {}
    wanted = (ctx.cfg.data.train_split, ctx.cfg.data.test_split)
    return {f"{split}.jsonl": Path(files[split]["path"]) for split in wanted if split in files}


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
        elif kind == "warning":
            self.ctx.ui.warn(str(event.get("message")))


def _start_job(ctx: Context) -> Job:
    from ftctl.backends.local.jobs import Job, new_job_id
    from ftctl.backends.local.launch import launch_command

    ws = ctx.local
    model = ctx.outputs("pick-model")
    compute = ctx.outputs("check-compute")
    params, notes = finetune_params(ctx)
    for note in notes:
        ctx.ui.info(f"  {note}")
    if params["precision"] == "auto":
        params["precision"] = compute.get("precision", "32")
    experiment = f"chat_completion_{model['name'].split('/')[-1]}"
    ws.ensure_experiment(experiment)
    name = display_name(model["name"], params, compute.get("gpus_per_node", 0))
    job_id = new_job_id()
    command = launch_command(
        ws.jobs_dir / job_id,
        num_gpus=compute.get("gpus_per_node", 0),
        apply_deepspeed=params["apply_deepspeed"],
        deepspeed_stage=params["deepspeed_stage"],
        python=sys.executable,
    )
    spec = {
        "job_id": job_id,
        "display_name": name,
        "model_path": model["path"],
        "train_file": _data_file(ctx, ctx.cfg.data.train_split, required=True),
        "eval_file": _data_file(ctx, ctx.cfg.data.test_split, required=False),
        "params": params,
        "device": compute.get("device", "cpu"),
        "mlflow": {"tracking_uri": ws.tracking_uri, "experiment": experiment, "run_name": name},
        "command": command,
    }
    job = Job.create(ws.jobs_dir, spec)
    # Record the job before starting it: an ftctl killed in between leaves a recorded job that the
    # next `ftctl submit` starts or re-attaches to, never one training unrecorded while a second starts.
    recorded = {"job_id": job.id, "job_dir": str(job.dir), "display_name": name}
    ctx.save_progress(recorded)
    pid = job.start()
    ctx.save_progress({**recorded, "pid": pid})
    ctx.ui.info(f"  job {job.id} started (pid {pid}); log: {job.log_path}")
    return job


def run(ctx: Context, rec: dict[str, Any]) -> dict[str, Any]:
    ctx.require_local("submit")
    from ftctl.backends.local import procs
    from ftctl.backends.local.jobs import COMPLETED, Job

    recorded = rec.get("outputs") or {}
    if recorded.get("job_dir"):
        job = Job(Path(recorded["job_dir"]))
        if job.never_started():  # the attempt that recorded it was interrupted before starting it
            ctx.ui.info(f"  re-attaching to job {job.id} (its start was interrupted: starting it now)")
            ctx.save_progress({**recorded, "pid": job.start()})
        else:
            ctx.ui.info(f"  re-attaching to job {job.id}")
    else:
        job = _start_job(ctx)
    if not ctx.wait:
        raise Detached(f"job {job.id} is running; follow it with `ftctl submit` or check `ftctl status`")
    with ctx.ui.progress("training", unit="steps") as bar:
        final = job.follow(_Follower(ctx, bar))
    if final.get("state") != COMPLETED:
        ctx.ui.info(procs.tail(job.log_path, 20))
        raise StageFailed(
            f"job {job.id} failed: {final.get('error', 'unknown error')}",
            hint=f"the whole log is in {job.log_path}",
        )
    result = job.result()
    eval_loss = result.get("eval_loss")
    ctx.ui.info(
        f"  done: train_loss {result.get('train_loss'):.4f}, "
        f"eval_loss {'n/a' if eval_loss is None else format(eval_loss, '.4f')}, "
        f"{result.get('tokens_per_second', 0):,.0f} tok/s; model in {result.get('model_dir')}"
    )
    return {
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


def summary(outputs: dict[str, Any]) -> str:
    loss = outputs.get("eval_loss") or outputs.get("train_loss")
    text = f"{outputs.get('job_id')}"
    return f"{text} loss {loss:.3f}" if isinstance(loss, float) else text
