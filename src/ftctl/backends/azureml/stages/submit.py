"""submit on Azure ML: the notebook's pipeline job around the registry's chat_completion_pipeline.

The job's name is chosen and recorded in the state before anything is sent, so an interrupted submit
(Ctrl-C, a closed terminal, kill -9) is re-attached by the next `ftctl submit` / `ftctl run`: if Azure ML
has the job, ftctl follows it; if the PUT never arrived, the same name is submitted. A second job is never
started for one attempt.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml import dry_run
from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling, elapsed, show_dry_run, status_text
from ftctl.backends.azureml.params import Declared, FinetuneSources, display_params, finetune_inputs
from ftctl.backends.azureml.steps import TERMINAL, error_line, failed_step, pipeline_steps, read_log
from ftctl.errors import Detached, FtctlError, StageFailed, UsageError
from ftctl.stages.contract import always_alive as alive
from ftctl.stages.contract import no_output_files as output_files
from ftctl.stages.contract import nothing_to_retire as retire
from ftctl.stages.shared import data_file, display_name
from ftctl.stages.shared import training_inputs as inputs

if TYPE_CHECKING:
    from ftctl.backends.azureml.params import FinetuneInputs
    from ftctl.context import Context
    from ftctl.records import PickModelOutputs
    from ftctl.stages.contract import Outputs, StageCall

# Inputs ftctl sets itself, as the notebook does.
RESERVED = {
    "mlflow_model_path",
    "compute_model_import",
    "compute_preprocess",
    "compute_finetune",
    "compute_model_evaluation",
    "train_file_path",
    "validation_file_path",
    "test_file_path",
    "number_of_gpu_to_use_finetuning",
}
REQUIRED = ["mlflow_model_path", "train_file_path", "number_of_gpu_to_use_finetuning"]
COMPUTES = ["compute_model_import", "compute_preprocess", "compute_finetune", "compute_model_evaluation"]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@contextlib.contextmanager
def _sdk_stderr(ctx: Context) -> Iterator[None]:
    """azure-ai-ml writes colour codes to stderr while it uploads local files; keep only real text."""
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        text = _ANSI.sub("", line).strip()
        if text:
            ctx.ui.info(f"  {text}")


def _component(ctx: Context) -> Any:
    az = ctx.cfg.azureml
    registry = azure(ctx).registry
    which = f"version {az.component_version}" if az.component_version else f"label {az.component_label}"
    with calling(
        f"getting component {az.component_name} ({which}) from registry {az.registry_name!r}",
        not_found=f"no component {az.component_name} ({which}) in registry {az.registry_name!r}",
    ):
        if az.component_version:
            return registry.components.get(az.component_name, version=az.component_version)
        return registry.components.get(az.component_name, label=az.component_label)


def _declared(component: Any) -> dict[str, Declared]:
    declared = {}
    for name, spec in (component.inputs or {}).items():
        enum = getattr(spec, "enum", None)
        declared[name] = Declared(
            type=str(getattr(spec, "type", "string")),
            enum=[str(e) for e in enum] if enum else None,
            default=getattr(spec, "default", None),
        )
    return declared


def _data_path(ctx: Context, call: StageCall, split: str, setting: str, required: bool) -> str | None:
    path = data_file(ctx, call.upstream, split, setting, required)
    if path is None:
        ctx.ui.warn(f"no {split!r} split ({setting}); the service will split the training data itself")
    return path


def _checked_component(ctx: Context) -> tuple[Any, dict[str, Declared]]:
    """The chat_completion_pipeline component and its declared inputs; refused when it does not declare
    the inputs ftctl sets itself."""
    component = _component(ctx)
    declared = _declared(component)
    missing = [name for name in [*REQUIRED, *COMPUTES] if name not in declared]
    if missing:
        raise UsageError(
            f"component {component.name} {component.version} does not declare {', '.join(missing)}",
            hint="pin azureml.component_version to a chat_completion_pipeline version that does",
        )
    return component, declared


def _chosen_inputs(
    ctx: Context, model: PickModelOutputs, component: Any, declared: dict[str, Declared]
) -> FinetuneInputs:
    """The finetune inputs sent to the component (params.finetune_inputs), saying which of the model's
    defaults were applied, what else was noted and what was not sent."""
    cfg = ctx.cfg
    explicit = {key.split(".", 1)[1] for key in ctx.config.explicit if key.startswith("finetune.")}
    sources = FinetuneSources(
        values=cfg.finetune.model_dump(),
        set_keys=set(cfg.finetune.model_fields_set),
        explicit=explicit,
        model_defaults=model.model_specific_defaults,
        use_model_defaults=cfg.finetune.use_model_defaults,
    )
    chosen = finetune_inputs(sources, declared, RESERVED)
    prefix = "model default "
    applied = [note.removeprefix(prefix) for note in chosen.notes if note.startswith(prefix)]
    if applied:
        ctx.ui.info(f"  the model's defaults over the config: {', '.join(applied)}")
    for note in chosen.notes:
        if not note.startswith(prefix):
            ctx.ui.info(f"  {note}")
    if chosen.dropped:
        ctx.ui.warn(f"not sent to {component.name} {component.version}: {'; '.join(chosen.dropped)}")
    return chosen


def _data_inputs(ctx: Context, call: StageCall) -> tuple[str | None, str | None, dict[str, Any]]:
    """The train and test files (the test file None when there is no test split) and the pipeline's
    data inputs for them."""
    from azure.ai.ml import Input

    cfg = ctx.cfg
    train = _data_path(ctx, call, cfg.data.train_split, "data.train_split", required=True)
    test = _data_path(ctx, call, cfg.data.test_split, "data.test_split", required=False)
    data: dict[str, Any] = {"train_file_path": Input(type="uri_file", path=train)}
    if test:
        data["test_file_path"] = Input(type="uri_file", path=test)
    return train, test, data


def _pipeline_job(
    component: Any,
    model: PickModelOutputs,
    cluster: str,
    gpus: int,
    data: dict[str, Any],
    inputs: dict[str, Any],
) -> Any:
    """The pipeline job, as the notebook builds it: one chat_completion_pipeline node on `cluster` for
    every step, its fine-tuned model as the job's output."""
    from azure.ai.ml.dsl import pipeline

    @pipeline
    def create_pipeline() -> dict[str, Any]:
        chat_completion_pipeline = component(
            mlflow_model_path=model.need("id"),
            compute_model_import=cluster,
            compute_preprocess=cluster,
            compute_finetune=cluster,
            compute_model_evaluation=cluster,
            number_of_gpu_to_use_finetuning=gpus,
            **data,
            **inputs,
        )
        return {"trained_model": chat_completion_pipeline.outputs.mlflow_model_folder}

    with calling(f"building the {component.name} pipeline"):
        return create_pipeline()


def _name_job(ctx: Context, job: Any, display: str, experiment: str, job_name: str | None) -> None:
    """Set the job's display name, experiment, pipeline settings (azureml section) and, when chosen
    already, its name."""
    cfg = ctx.cfg
    job.display_name = display
    job.experiment_name = experiment
    settings = job.settings
    assert settings is not None  # a @pipeline job always has its settings object
    settings.force_rerun = cfg.azureml.force_rerun
    settings.continue_on_step_failure = cfg.azureml.continue_on_step_failure
    if job_name:
        job.name = job_name


def build(ctx: Context, call: StageCall, job_name: str | None) -> tuple[Any, dict[str, Any]]:
    """The pipeline job (an SDK entity) and what ftctl records about it."""
    cfg = ctx.cfg
    model, compute = call.upstream.pick_model, call.upstream.check_compute
    component, declared = _checked_component(ctx)
    chosen = _chosen_inputs(ctx, model, component, declared)
    gpus = compute.gpus_per_node or 1
    model_name = model.need("name")
    name = display_name(model_name, display_params(chosen.inputs, declared), gpus)
    experiment = cfg.azureml.experiment_name or f"chat_completion_{model_name.split('/')[-1]}"
    train, test, data = _data_inputs(ctx, call)
    cluster = compute.need("name")
    job = _pipeline_job(component, model, cluster, gpus, data, chosen.inputs)
    _name_job(ctx, job, name, experiment, job_name)
    info = {
        "job_name": job_name,
        "job_id": job_name,
        "display_name": name,
        "experiment_name": experiment,
        "component_id": component.id,
        "compute": cluster,
        "gpus_per_node": gpus,
        "params": chosen.inputs,
        "dropped": chosen.dropped,
        "train_file": train,
        "test_file": test,
    }
    return job, info


def _new_job_name() -> str:
    return f"ftctl-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def _get_job(ctx: Context, name: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    with calling(f"reading job {name}"):
        try:
            return azure(ctx).workspace.jobs.get(name)
        except ResourceNotFoundError:
            return None


def _submit(ctx: Context, call: StageCall, job_name: str) -> tuple[Any, dict[str, Any]]:
    job, info = build(ctx, call, job_name)
    call.checkpoint({**info, "submitted": False})
    ctx.ui.info(f"  submitting {job_name} ({info['display_name']}) to experiment {info['experiment_name']}")
    with calling(f"submitting pipeline job {job_name}"), _sdk_stderr(ctx):
        created = azure(ctx).workspace.jobs.create_or_update(job, experiment_name=info["experiment_name"])
    info.update(submitted=True, studio_url=created.studio_url)
    call.checkpoint(info)
    ctx.ui.info(f"  job {job_name} submitted: {created.studio_url}")
    return created, info


def step_statuses(ctx: Context, name: str) -> dict[str, str]:
    """The pipeline job's steps and their states (steps.pipeline_steps), for progress; {} when they
    cannot be read."""
    try:
        return {step.name: step.status for step in pipeline_steps(ctx, name)}
    except Exception:  # progress only: never what ends the stage
        return {}


def _failed(ctx: Context, name: str, studio: str | None) -> StageFailed:
    """The error for a pipeline job that ended Failed: the step that failed and the line of its user log
    that says why (run history's error message for the step when the log names none). The job's status
    alone when no step says it failed or the steps cannot be read."""
    try:
        step = failed_step(pipeline_steps(ctx, name))
    except FtctlError as exc:
        ctx.ui.warn(f"could not list the job's steps: {exc.message}")
        step = None
    if step is None:
        return StageFailed(f"job {name} ended Failed", hint=f"its logs are in Azure ML studio: {studio}")
    try:
        log = read_log(ctx, step)
        error = error_line(log.text) or log.error
    except FtctlError as exc:
        ctx.ui.warn(f"could not read the log of step {step.name}: {exc.message}")
        error = None
    return StageFailed(
        f"pipeline job {name} failed at step {step.name}: {error or 'its log names no error'}",
        hint=f"the step's whole log: `ftctl logs --step {step.name}`; the job in Azure ML studio: {studio}",
    )


def _follow(ctx: Context, name: str) -> Any:
    """Wait for the job to end, saying when it or one of its steps changes state."""
    start = time.monotonic()
    last = None
    steps: dict[str, str] = {}
    while True:
        job = _get_job(ctx, name)
        if job is None:
            raise StageFailed(f"job {name} disappeared from the workspace")
        status = status_text(job.status)
        if status != last:
            ctx.ui.info(f"  [{elapsed(start)}] job {name}: {status}")
            last = status
        if status not in ("NotStarted", "Queued"):
            for step, state in step_statuses(ctx, name).items():
                if steps.get(step) != state:
                    ctx.ui.info(f"  [{elapsed(start)}]   step {step}: {state}")
                    steps[step] = state
        if status in TERMINAL:
            return job
        time.sleep(ctx.cfg.poll_interval_s)


def dry_run_outputs(ctx: Context, title: str, job: Any, info: dict[str, Any]) -> Outputs:
    """A submit dry run's outputs, either route: the job entity shown as the SDK's YAML, and what submit
    would record of it (no name: only the service gives one)."""
    text = show_dry_run(ctx, title, job)
    return {"dry_run": True, **{k: v for k, v in info.items() if k != "job_name"}, "yaml_chars": len(text)}


def attach_or_submit(
    ctx: Context, call: StageCall, submit: Callable[..., tuple[Any, dict[str, Any]]], *, kind: str, plan: bool
) -> tuple[Any, dict[str, Any], str]:
    """(job, what to record of it, its name): the recorded job re-attached to; or, when the attempt that
    recorded its name was interrupted before Azure ML had it, submitted under that name; else, after the
    pre-flight plan (`plan`), a new one. `submit(ctx, call, name)` creates the job."""
    recorded = dict(call.recorded)
    name = recorded.get("job_name")
    job = _get_job(ctx, name) if name else None
    if job is not None and name:
        ctx.ui.info(f"  re-attaching to {kind} {name}")
        return job, recorded, name
    if name:
        ctx.ui.info(f"  job {name} was recorded but never reached Azure ML; submitting it now")
        job, info = submit(ctx, call, name)
        return job, info, name
    if plan:
        from ftctl.backends.azureml.preflight import preflight

        preflight(ctx, call)
    job, info = submit(ctx, call, _new_job_name())
    return job, info, info["job_name"]


def follow_to_completion(
    ctx: Context, call: StageCall, name: str, studio: str | None, *, kind: str
) -> tuple[Any, str]:
    """(the job as it ended, "Completed"): job `name` followed to its end; Detached without --wait,
    StageFailed when it failed or ended otherwise."""
    if not call.options.wait:
        raise Detached(f"{kind} {name} is running on Azure ML ({studio}); follow it with `ftctl submit`")
    final = _follow(ctx, name)
    status = status_text(final.status)
    if status == "Failed":
        raise _failed(ctx, name, studio)
    if status != "Completed":
        raise StageFailed(f"job {name} ended {status}", hint=f"its logs are in Azure ML studio: {studio}")
    return final, status


def run(ctx: Context, call: StageCall) -> Outputs:
    if dry_run.offline(call, "pick-model", "check-compute", "prepare-data"):
        return dry_run.submit(ctx)
    if call.upstream.pick_model.route == "job":
        from ftctl.backends.azureml.stages import finetuning_job

        return finetuning_job.submit(ctx, call)
    if call.options.dry_run:
        return dry_run_outputs(ctx, "pipeline job that submit would create", *build(ctx, call, None))
    job, info, name = attach_or_submit(ctx, call, _submit, kind="job", plan=call.options.plan)
    studio = job.studio_url or info.get("studio_url")
    _, status = follow_to_completion(ctx, call, name, studio, kind="job")
    ctx.ui.info(f"  job {name} completed; model output azureml://jobs/{name}/outputs/trained_model")
    outputs = {
        **{k: v for k, v in info.items() if k != "submitted"},
        "job_name": name,
        "job_id": name,
        "status": status,
        "studio_url": studio,
        "trained_model": f"azureml://jobs/{name}/outputs/trained_model",
    }
    pace = _measured_pace(ctx, call, name)
    return {**outputs, "pace": pace} if pace else outputs


def _measured_pace(ctx: Context, call: StageCall, name: str) -> dict[str, Any] | None:
    """The job's measured seconds per optimizer step, with what they depend on (the model, the VM size,
    its GPUs): what `ftctl plan` estimates the next job's time from. Best effort: the job completed
    whether or not its metrics can be read."""
    from ftctl.backends.azureml.hooks import training_pace

    try:
        found = training_pace(ctx, name)
    except Exception:  # noqa: BLE001 - no mlflow, no run yet, a transient error: no pace, nothing else
        return None
    if found is None:
        return None
    compute = call.upstream.check_compute
    return {
        **found,
        "model": call.upstream.pick_model.name,
        "instance_type": compute.size,
        "gpus_per_node": compute.gpus_per_node,
    }


def summary(outputs: dict[str, Any]) -> str:
    if outputs.get("dry_run"):
        return "dry run"
    return f"{outputs.get('job_name')} {outputs.get('status', 'submitted')}"


__all__ = ["alive", "inputs", "output_files", "retire", "run", "summary"]
