"""submit and register on the fine-tuning job route (finetune.route: job).

Newer models (Phi-4-mini-instruct, ...) are fine-tuned through azure-ai-ml's fine-tuning job API rather
than the chat_completion_pipeline component (azureml-examples, sdk/python/jobs/finetuning/standalone/
model-as-a-service/chat-completion and model-as-a-platform/chat-completion):
`azure.ai.ml.finetuning.create_finetuning_job(model=<registry asset id>, task=ChatCompletion,
training_data=, validation_data=, hyperparameters={name: str}, output_model_name_prefix=, compute=)` gives
a CustomModelFineTuningJob for `jobs.create_or_update`; with no `compute` it runs serverless. The service
registers the fine-tuned model itself, under the output model name, in the workspace.

As on the pipeline route, the job's name is recorded (call.checkpoint) before the job is sent, so an
interrupted submit re-attaches to it instead of starting another; status, logs and metrics read the job
the same way (ftctl.backends.azureml.stages.submit follows it).

azure-ai-ml 1.35.2 raises UnboundLocalError when validation_data is left out, so it is always given
(the test split); the route needs one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ftctl.backends.azureml.backend import azure
from ftctl.backends.azureml.client import calling
from ftctl.backends.azureml.params import Declared, FinetuneSources, finetune_inputs
from ftctl.errors import StageFailed, UsageError
from ftctl.stages.shared import data_file, model_name

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall

TASK = "ChatCompletion"  # azure.ai.ml.finetuning.FineTuningTaskType.CHAT_COMPLETION
OUTPUT = "registered_model"  # the job's output: the model the service registers
# The hyperparameters the public chat-completion examples send (as strings); the service chooses the rest.
HYPERPARAMETERS = {
    "num_train_epochs": Declared(type="integer"),
    "per_device_train_batch_size": Declared(type="integer"),
    "learning_rate": Declared(type="number"),
}


def hyperparameters(ctx: Context, call: StageCall) -> dict[str, str]:
    """The finetune values the job sends, the model's model_specific_defaults applied as on the pipeline
    route; what the route does not send is said once."""
    cfg = ctx.cfg.finetune
    explicit = {key.split(".", 1)[1] for key in ctx.config.explicit if key.startswith("finetune.")}
    sources = FinetuneSources(
        values={k: v for k, v in cfg.model_dump().items() if k != "route"},
        set_keys=set(cfg.model_fields_set) - {"route"},
        explicit=explicit,
        model_defaults=call.upstream.pick_model.model_specific_defaults,
        use_model_defaults=cfg.use_model_defaults,
    )
    chosen = finetune_inputs(sources, HYPERPARAMETERS, set())
    unsent = sorted({item.split("=", 1)[0] for item in chosen.dropped})
    if unsent:
        ctx.ui.info(f"  the fine-tuning job API chooses these itself (not sent): {', '.join(unsent)}")
    return {name: str(value) for name, value in chosen.inputs.items()}


def _data(ctx: Context, call: StageCall) -> tuple[str, str]:
    train = data_file(ctx, call.upstream, ctx.cfg.data.train_split, "data.train_split", True)
    validation = data_file(ctx, call.upstream, ctx.cfg.data.test_split, "data.test_split", False)
    if train is None or validation is None:
        raise UsageError(
            f"data.test_split: the prepared data has no {ctx.cfg.data.test_split!r} split; the fine-tuning "
            "job route needs one as its validation data",
            hint="set data.test_split to a prepared split (e.g. test_sft)",
        )
    return train, validation


def build(ctx: Context, call: StageCall, job_name: str | None) -> tuple[Any, dict[str, Any]]:
    """The CustomModelFineTuningJob (an SDK entity) and what ftctl records about it."""
    from azure.ai.ml.finetuning import create_finetuning_job

    model, compute = call.upstream.pick_model, call.upstream.check_compute
    base = model.need("name")
    train, validation = _data(ctx, call)
    params = hyperparameters(ctx, call)
    cluster = None if compute.serverless else compute.need("name")
    experiment = ctx.cfg.azureml.experiment_name or f"chat_completion_{base.split('/')[-1]}"
    display = f"{base}-ultrachat-{TASK.lower()}-job"
    output_name = f"{model_name(ctx, call.upstream)}-{job_name}" if job_name else None
    with calling("building the fine-tuning job"):
        job = create_finetuning_job(
            model=model.need("id"),
            task=TASK,
            training_data=train,
            validation_data=validation,  # always: azure-ai-ml 1.35.2 fails without it
            hyperparameters=params,
            output_model_name_prefix=output_name or f"{model_name(ctx, call.upstream)}-dry-run",
            compute=cluster,
            name=job_name,
            display_name=display,
            experiment_name=experiment,
        )
    info = {
        "route": "job",
        "job_name": job_name,
        "job_id": job_name,
        "display_name": display,
        "experiment_name": experiment,
        "compute": cluster or "serverless",
        "params": params,
        "output_model_name": output_name,
        "train_file": train,
        "test_file": validation,
    }
    return job, info


def _submit(ctx: Context, call: StageCall, job_name: str) -> tuple[Any, dict[str, Any]]:
    from ftctl.backends.azureml.stages.submit import _sdk_stderr

    job, info = build(ctx, call, job_name)
    call.checkpoint({**info, "submitted": False})
    where = "serverless" if info["compute"] == "serverless" else f"on cluster {info['compute']}"
    ctx.ui.info(f"  submitting fine-tuning job {job_name} ({where}) to experiment {info['experiment_name']}")
    with calling(f"submitting fine-tuning job {job_name}"), _sdk_stderr(ctx):
        created = azure(ctx).workspace.jobs.create_or_update(job)
    info.update(submitted=True, studio_url=created.studio_url)
    call.checkpoint(info)
    ctx.ui.info(f"  job {job_name} submitted: {created.studio_url}")
    return created, info


def submit(ctx: Context, call: StageCall) -> Outputs:
    """submit on the job route: create (or re-attach to) the fine-tuning job and follow it to its end."""
    from ftctl.backends.azureml.stages import submit as pipeline

    if call.options.dry_run:
        title = "fine-tuning job that submit would create"
        return pipeline.dry_run_outputs(ctx, title, *build(ctx, call, None))
    # On a cluster, the same memory and time check as the pipeline route; serverless has no plan.
    plan = call.options.plan and not call.upstream.check_compute.serverless
    job, info, name = pipeline.attach_or_submit(ctx, call, _submit, kind="fine-tuning job", plan=plan)
    studio = job.studio_url or info.get("studio_url")
    final, status = pipeline.follow_to_completion(ctx, call, name, studio, kind="fine-tuning job")
    output = (final.outputs or {}).get(OUTPUT)
    output_name = getattr(output, "name", None) or info.get("output_model_name")
    ctx.ui.info(f"  job {name} completed; the service registered the model {output_name}")
    outputs = {
        **{k: v for k, v in info.items() if k != "submitted"},
        "job_name": name,
        "job_id": name,
        "status": status,
        "studio_url": studio,
        "output_model_name": output_name,
        "output_model_version": getattr(output, "version", None),
    }
    pace = pipeline._measured_pace(ctx, call, name)
    return {**outputs, "pace": pace} if pace else outputs


def _registered(ctx: Context, name: str, version: str | None, job_name: str) -> Any:
    """The model version the fine-tuning job registered: the version its output names, else the version
    of `name` whose job is `job_name`."""
    from azure.core.exceptions import ResourceNotFoundError

    models = azure(ctx).workspace.models
    with calling(f"reading the models the fine-tuning job {job_name} registered"):
        if version:
            try:
                return models.get(name=name, version=version)
            except ResourceNotFoundError:
                return None
        for found in models.list(name=name):
            if getattr(found, "job_name", None) == job_name:
                return found
    return None


def register(ctx: Context, call: StageCall) -> Outputs:
    """register on the job route: the service registered the fine-tuned model when the job completed;
    register runs the promotion gate on the job's metrics and records that model (it creates nothing)."""
    from dataclasses import asdict

    from ftctl.backends.azureml.evaluate import check_gate

    submitted = call.upstream.submit
    job_name = submitted.need("job_name")
    name = submitted.need("output_model_name")
    version = getattr(submitted, "output_model_version", None)
    if call.options.dry_run:
        ctx.ui.result(
            f"# register (job route): records model {name}, registered by fine-tuning job {job_name}"
        )
        return {"dry_run": True, "model_name": name, "job_name": job_name}
    decision, gate_tags = check_gate(ctx, call)
    registered = _registered(ctx, name, str(version) if version else None, job_name)
    if registered is None:
        raise StageFailed(
            f"fine-tuning job {job_name} completed but the workspace has no model {name} from it",
            hint="check the job's outputs in Azure ML studio; `ftctl submit --force` fine-tunes again",
        )
    ctx.ui.info(f"  {registered.name} version {registered.version}, registered by job {job_name}")
    return {
        "model_name": registered.name,
        "version": str(registered.version),
        "id": registered.id,
        "model_uri": f"azureml:{registered.name}:{registered.version}",
        "source": f"azureml://jobs/{job_name}/outputs/{OUTPUT}",
        "job_name": job_name,
        "tags": {str(k): str(v) for k, v in (registered.tags or {}).items()},
        "gate_tags": gate_tags,  # not written to the service's model: it is the job's output
        "gate": asdict(decision),
    }
