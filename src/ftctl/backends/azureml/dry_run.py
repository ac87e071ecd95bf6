"""Dry runs from the configuration alone: what each stage would call and create, without a login, without
the network and without the earlier stages' results.

A stage's `--dry-run` plans from the config when an upstream stage it reads has no recorded outputs (and
auth, prepare-data, score and teardown always do: a dry run never logs in, writes data, scores or deletes).
With the upstream outputs recorded (after `ftctl auth`...), check-compute, submit, register and deploy show
the SDK entities they would send, reading what they need from Azure ML as before.

What only Azure ML knows at run time (the model's latest version, the cluster's GPU count, the job's
name...) is shown as a placeholder in angle brackets: `<latest version>`. azure-ai-ml is imported only to
print SDK entities as the SDK's YAML (no client is built, nothing is sent).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.errors import ConfigError

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall

LATEST = "<latest version>"
TIMESTAMP = "<timestamp at run time>"
JOB_NAME = "<job name chosen at submit>"
LEGEND = "<...>: known only to Azure ML at run time"


def offline(call: StageCall, *upstream: str) -> bool:
    """Whether this dry run plans from the config: some upstream stage it reads has no outputs recorded."""
    return call.options.dry_run and any(not call.upstream.recorded(name) for name in upstream)


def show(ctx: Context, stage: str, plan: dict[str, Any]) -> Outputs:
    """Print the plan as YAML under a header; the stage's (unrecorded) outputs."""
    import yaml

    text = yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, width=1000).rstrip()
    ctx.ui.result(f"# {stage}: dry run from the configuration, no login, nothing sent ({LEGEND})\n{text}")
    return {"dry_run": True, "offline": True, **plan}


def _entity(entity: Any) -> Any:
    """An SDK entity as the YAML azure-ai-ml would write, parsed back into plain data."""
    import yaml

    from ftctl.backends.azureml.client import entity_yaml

    return yaml.safe_load(entity_yaml(entity))


def _model_ref(ctx: Context) -> dict[str, str]:
    cfg = ctx.cfg.model
    registry = ctx.cfg.azureml.registry_name
    version = str(cfg.revision) if cfg.revision else LATEST
    return {
        "name": cfg.name,
        "version": version,
        "id": f"azureml://registries/{registry}/models/{cfg.name}/versions/{version}",
    }


# --- the stages -----------------------------------------------------------------------------------------


def auth(ctx: Context) -> Outputs:
    from ftctl.backends.azureml.client import ARM_SCOPE, resolve_workspace

    az = ctx.cfg.azureml
    try:
        ref = resolve_workspace(ctx)
        workspace: dict[str, Any] = {
            "subscription_id": ref.subscription_id,
            "resource_group": ref.resource_group,
            "workspace_name": ref.workspace_name,
            "from": ref.source,
        }
        if ref.config_file is not None:
            client = f"MLClient.from_config(credential, path={str(ref.config_file)!r})"
        else:
            client = (
                f"MLClient(credential, {ref.subscription_id!r}, {ref.resource_group!r}, "
                f"{ref.workspace_name!r})"
            )
    except ConfigError as exc:
        # Not an error in a dry run: the plan says where the ids will come from.
        workspace = {
            "subscription_id": "<azureml.subscription_id or AZURE_SUBSCRIPTION_ID>",
            "resource_group": "<azureml.resource_group or AZURE_RESOURCE_GROUP>",
            "workspace_name": "<azureml.workspace_name or AZUREML_WORKSPACE_NAME>",
            "from": "<a workspace config.json (--workspace-config), or the three ids>",
            "missing_now": exc.message,
        }
        client = "MLClient(credential, <subscription_id>, <resource_group>, <workspace_name>)"
    browser = (
        "; then InteractiveBrowserCredential() if it finds no login and a terminal is attached"
        if az.interactive_login
        else ""
    )
    return show(
        ctx,
        "auth",
        {
            "calls": [
                f"DefaultAzureCredential().get_token({ARM_SCOPE!r}){browser}",
                client,
                f"workspaces.get({workspace['workspace_name']!r}) -> location, MLflow tracking URI",
                f"MLClient(credential, registry_name={az.registry_name!r})  # registry discovery",
            ],
            "workspace": workspace,
            "registry": az.registry_name,
            "location": "<the workspace's region>",
        },
    )


def pick_model(ctx: Context) -> Outputs:
    cfg = ctx.cfg.model
    registry = ctx.cfg.azureml.registry_name
    which = f"version={str(cfg.revision)!r}" if cfg.revision else f"label={cfg.label!r}"
    return show(
        ctx,
        "pick-model",
        {
            "calls": [f"MLClient(registry_name={registry!r}).models.get({cfg.name!r}, {which})"],
            "model": _model_ref(ctx),
            "reads": {
                "finetune_compute_allow_list": "<system_metadata.supportedComputes or the model's tags>",
                "inference_compute_allow_list": "<system_metadata.supportedComputes or the model's tags>",
                "model_specific_defaults": "<the model's tags or system_metadata>",
                "lifecycle": "<archived or fine-tuning retired: refused (exit 2), naming successors>",
            },
        },
    )


def check_compute(ctx: Context) -> Outputs:
    from azure.ai.ml.entities import AmlCompute

    from ftctl.stages.shared import check_lists

    cfg = ctx.cfg.compute
    entity = AmlCompute(
        name=cfg.name,
        size=cfg.size,
        min_instances=cfg.min_instances,
        max_instances=cfg.max_instances,
        idle_time_before_scale_down=cfg.idle_time_before_scale_down,
    )
    if cfg.allow_list:
        check_lists(cfg.size, cfg.allow_list, cfg.deny_list, "compute.allow_list")
        lists = f"{cfg.size} is in compute.allow_list"
    else:
        lists = f"<{cfg.size} checked against the model's finetune allow-list, else the deny list>"
    return show(
        ctx,
        "check-compute",
        {
            "calls": [
                f"compute.get({cfg.name!r})",
                f"if it does not exist: compute.begin_create_or_update(<the AmlCompute below>)  "
                f"# after checking the {cfg.size} quota (compute.list_usage)",
                "compute.list_sizes()  # GPUs per node",
            ],
            "cluster_exists": "<whether the workspace has it>",
            "would_create": _entity(entity),
            "allow_list": lists,
            "gpus_per_node": cfg.num_gpus or f"<GPUs of one {cfg.size}>",
        },
    )


def prepare_data(ctx: Context) -> Outputs:
    from ftctl.data.sources import FILE_TYPES

    cfg = ctx.cfg.data
    one_file = Path(cfg.dataset).expanduser().is_file() and cfg.dataset.lower().endswith(FILE_TYPES)
    splits = (
        [cfg.train_split, cfg.test_split] if one_file else [cfg.train_split, cfg.test_split, cfg.score_split]
    )
    shape = (
        {"divides": f"{cfg.test_pc:g}% of its valid records to {cfg.test_split} (seed {cfg.seed}), the rest "
         f"to {cfg.train_split}"}
        if one_file
        else {"other_splits": "<every other split of the dataset, as <split>.jsonl>"}
    )  # fmt: skip
    return show(
        ctx,
        "prepare-data",
        {
            "runs_on": "this machine (as the notebook's download-dataset.py)",
            "dataset": cfg.dataset,
            "subset": cfg.subset,
            "format": cfg.format,
            "split_pc": cfg.split_pc,
            "writes": {split: str(ctx.data_dir() / f"{split}.jsonl") for split in dict.fromkeys(splits)},
            **shape,
            "rows": "<known once the dataset is read>",
        },
    )


def finetune_inputs_offline(
    ctx: Context, model_defaults: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The finetune inputs the config sets (and `model_defaults` over them, when given and
    finetune.use_model_defaults), typed as submit would send them to a component that declares them
    (booleans as "true"/"false"); what the component does not declare is only known at submit."""
    from ftctl.backends.azureml.params import Declared, FinetuneSources, finetune_inputs
    from ftctl.backends.azureml.stages.submit import RESERVED

    cfg = ctx.cfg.finetune
    values = cfg.model_dump()
    declared = {}
    for key, value in values.items():
        name = {"num_nodes": "num_nodes_finetune"}.get(key, key)
        if isinstance(value, bool):
            declared[name] = Declared("string", ["true", "false"])
        elif isinstance(value, int):
            declared[name] = Declared("integer")
        elif isinstance(value, float):
            declared[name] = Declared("number")
        else:
            declared[name] = Declared("string")
    explicit = {key.split(".", 1)[1] for key in ctx.config.explicit if key.startswith("finetune.")}
    sources = FinetuneSources(
        values=values,
        set_keys=set(cfg.model_fields_set),
        explicit=explicit,
        model_defaults=model_defaults or {},
        use_model_defaults=bool(model_defaults) and cfg.use_model_defaults,
    )
    chosen = finetune_inputs(sources, declared, RESERVED)
    return chosen.inputs, chosen.dropped


def _planned_display_name(ctx: Context, inputs: dict[str, Any]) -> str:
    """The job's display name as submit would choose it; when compute.num_gpus is unset, its batch size
    is shown as a product with the GPUs per node, known only at run time."""
    from ftctl.stages.shared import display_name

    cfg = ctx.cfg
    params: dict[str, Any] = {
        "per_device_train_batch_size": cfg.finetune.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.finetune.gradient_accumulation_steps,
        "num_nodes": cfg.finetune.num_nodes,
        "deepspeed_stage": cfg.finetune.deepspeed_stage,
        "apply_deepspeed": cfg.finetune.apply_deepspeed,
        "apply_lora": cfg.finetune.apply_lora,
        "lr_scheduler_type": cfg.finetune.lr_scheduler_type,
        "save_total_limit": inputs.get("save_total_limit") or -1,
        "max_seq_length": inputs.get("max_seq_length") or -1,
    }
    name = display_name(cfg.model.name, params, cfg.compute.num_gpus or 1)
    if not cfg.compute.num_gpus:  # the batch in the name counts the GPUs per node
        f = cfg.finetune
        batch = f.per_device_train_batch_size * f.gradient_accumulation_steps * f.num_nodes
        name = name.replace(f"-bs{batch}-", f"-bs<{batch} x GPUs per node>-", 1)
    return name


def _component_uri(ctx: Context) -> str:
    """The registry component's asset id: its pinned version, else its label."""
    az = ctx.cfg.azureml
    return (
        f"azureml://registries/{az.registry_name}/components/{az.component_name}/versions/{az.component_version}"
        if az.component_version
        else f"azureml://registries/{az.registry_name}/components/{az.component_name}/labels/{az.component_label}"
    )


def _node_inputs(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    """The pipeline node's inputs: the model, the cluster for every step, the data files (uploaded on
    submit), the GPUs per node and the finetune inputs."""
    cfg = ctx.cfg
    model = _model_ref(ctx)
    gpus: Any = cfg.compute.num_gpus or f"<GPUs per node of {cfg.compute.size}>"
    cluster = cfg.compute.name
    data_dir = ctx.data_dir()
    upload = "(uploaded to the workspace's default datastore on submit)"
    return {
        "mlflow_model_path": {"type": "mlflow_model", "path": model["id"]},
        **{key: cluster for key in ("compute_model_import", "compute_preprocess")},
        **{key: cluster for key in ("compute_finetune", "compute_model_evaluation")},
        "train_file_path": {
            "type": "uri_file",
            "path": f"{data_dir / f'{cfg.data.train_split}.jsonl'} {upload}",
        },
        "test_file_path": {
            "type": "uri_file",
            "path": f"{data_dir / f'{cfg.data.test_split}.jsonl'} {upload}",
        },
        "number_of_gpu_to_use_finetuning": gpus,
        **inputs,
    }


def _pipeline_job(ctx: Context, name: str, node_inputs: dict[str, Any]) -> dict[str, Any]:
    """The pipeline job submit would create, as the SDK's YAML would show it."""
    cfg = ctx.cfg
    az = cfg.azureml
    return {
        "type": "pipeline",
        "name": JOB_NAME,
        "display_name": name,
        "experiment_name": az.experiment_name or f"chat_completion_{cfg.model.name.split('/')[-1]}",
        "settings": {"force_rerun": az.force_rerun, "continue_on_step_failure": az.continue_on_step_failure},
        "outputs": {"trained_model": {"type": "mlflow_model"}},
        "jobs": {
            az.component_name: {
                "type": "pipeline",
                "component": _component_uri(ctx),
                "component_version": str(az.component_version or LATEST),
                "inputs": node_inputs,
                "outputs": {"mlflow_model_folder": "${{parent.outputs.trained_model}}"},
            }
        },
    }


def _job_route(ctx: Context) -> bool:
    """Whether the configuration names the fine-tuning job route (with `auto`, pick-model decides from the
    model's metadata; offline, the pipeline route is shown)."""
    return ctx.cfg.finetune.route == "job"


def _job_route_submit(ctx: Context) -> Outputs:
    cfg = ctx.cfg
    compute = None if cfg.compute.name == "serverless" else cfg.compute.name
    call = (
        f"create_finetuning_job(model=<{cfg.model.name}'s registry id>, task='ChatCompletion', "
        f"training_data=<{cfg.data.train_split}.jsonl>, validation_data=<{cfg.data.test_split}.jsonl>, "
        "hyperparameters={num_train_epochs, per_device_train_batch_size, learning_rate}, "
        f"output_model_name_prefix=<model>-ultrachat-200k-{JOB_NAME}, compute={compute!r})"
    )
    return show(
        ctx,
        "submit",
        {
            "route": "job",
            "calls": [
                call,
                "jobs.create_or_update(<that job>)",
                "jobs.get(<job name>) every poll_interval_s",
            ],
        },
    )


def submit(ctx: Context) -> Outputs:
    if _job_route(ctx):
        return _job_route_submit(ctx)
    az = ctx.cfg.azureml
    inputs, dropped = finetune_inputs_offline(ctx)
    job = _pipeline_job(ctx, _planned_display_name(ctx, inputs), _node_inputs(ctx, inputs))
    plan: dict[str, Any] = {
        "calls": [
            f"MLClient(registry_name={az.registry_name!r}).components.get({az.component_name!r}, "
            + (
                f"version={az.component_version!r})"
                if az.component_version
                else f"label={az.component_label!r})"
            ),
            f"jobs.create_or_update(<the pipeline job below>, experiment_name={job['experiment_name']!r})",
            "jobs.get(<job name>) every poll_interval_s until it ends",
        ],
        "would_create": job,
        "later_at_submit": [
            "<the model's model_specific_defaults are applied over the finetune inputs>",
            f"<inputs {az.component_name} does not declare are dropped and reported>",
        ],
    }
    if dropped:
        plan["not_sent"] = dropped
    return show(ctx, "submit", plan)


def register(ctx: Context) -> Outputs:
    if _job_route(ctx):
        calls = [
            f"models.list(name=<the job's registered_model output>)  # the version job {JOB_NAME} registered"
        ]
        return show(ctx, "register", {"route": "job", "calls": calls, "would_create": None})
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model

    base = ctx.cfg.model.name
    name = ctx.cfg.register_.model_name or f"{base}-ultrachat-200k".replace("/", "-")
    path = f"azureml://jobs/{JOB_NAME}/outputs/trained_model"
    entity = Model(
        path=path,
        type=AssetTypes.MLFLOW_MODEL,
        name=name,
        version=TIMESTAMP,
        description=f"{base} fine-tuned on ultrachat_200k by ftctl (pipeline job {JOB_NAME})",
        tags={
            "ftctl.job_id": JOB_NAME,
            "ftctl.base_model": base,
            "ftctl.*": "<lineage: data hashes, config hash>",
        },
    )
    return show(
        ctx,
        "register",
        {
            "calls": ["models.create_or_update(<the model below>)"],
            "gate": gate(ctx),
            "would_create": _entity(entity),
        },
    )


def gate(ctx: Context) -> str:
    """What register's gate would compare (a dry run reads no metrics: they need a login)."""
    if ctx.cfg.register_.gate == "off":
        return "off (register.gate): registers without comparing"
    return (
        "improve (register.gate): when registering, the job's last eval_loss (its chat_completion_finetune "
        "MLflow run) must beat its eval_loss at step 0 and the previous version's ftctl.eval.loss tag; "
        "not read in a dry run"
    )


def deploy(ctx: Context) -> Outputs:
    if _job_route(ctx):
        name = f"{ctx.cfg.deploy.endpoint_name_prefix}<unix time>"
        calls = [
            "workspaces.get(<workspace>)  # its region and workspace id",
            f"serverless_endpoints.begin_create_or_update(ServerlessEndpoint(name={name!r}, model_id="
            "'azureml://locations/<region>/workspaces/<workspace id>/models/<registered model>"
            "/versions/<v>'))",
        ]
        return show(ctx, "deploy", {"route": "job", "calls": calls})
    from azure.ai.ml.entities import (
        ManagedOnlineDeployment,
        ManagedOnlineEndpoint,
        OnlineRequestSettings,
        ProbeSettings,
    )

    cfg = ctx.cfg.deploy
    base = ctx.cfg.model.name
    model_name = ctx.cfg.register_.model_name or f"{base}-ultrachat-200k".replace("/", "-")
    name = f"{cfg.endpoint_name_prefix}<unix time>"
    endpoint = ManagedOnlineEndpoint(name=name, description=f"{model_name} (ftctl)", auth_mode="key")
    deployment = ManagedOnlineDeployment(
        name=cfg.deployment_name,
        endpoint_name=name,
        model=f"azureml:{model_name}:{TIMESTAMP}",
        instance_type=cfg.instance_type or "<the model's recommended inference size>",
        instance_count=cfg.instance_count,
        liveness_probe=ProbeSettings(initial_delay=cfg.liveness_initial_delay_s),
        request_settings=OnlineRequestSettings(request_timeout_ms=cfg.request_timeout_ms),
    )
    return show(
        ctx,
        "deploy",
        {
            "calls": [
                "online_endpoints.begin_create_or_update(<the endpoint below>)",
                "online_deployments.begin_create_or_update(<the deployment below>)",
                "online_endpoints.begin_create_or_update(<the endpoint, traffic "
                f"{{{cfg.deployment_name!r}: 100}}>)",
            ],
            "instance_type": f"<{cfg.instance_type or 'the recommended size'} checked against the model's "
            "inference allow-list and the retired sizes>",
            "would_create": {"endpoint": _entity(endpoint), "deployment": _entity(deployment)},
        },
    )


def score(ctx: Context, call: StageCall) -> Outputs:
    cfg = ctx.cfg.score
    recorded = call.upstream.deploy.endpoint_name
    endpoint = recorded or f"{ctx.cfg.deploy.endpoint_name_prefix}<unix time>"
    parameters = {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "do_sample": cfg.do_sample,
        "max_new_tokens": cfg.max_new_tokens,
    }
    from ftctl.stages.shared import score_split

    split = score_split(ctx, call.upstream.state)
    calls = [
        f"online_endpoints.invoke(endpoint_name={endpoint!r}, "
        f"deployment_name={ctx.cfg.deploy.deployment_name!r}, request_file=<the request below>)"
    ]
    if call.upstream.deploy.endpoint_kind == "serverless" or (not recorded and _job_route(ctx)):
        calls = [
            f"serverless_endpoints.get_keys({endpoint!r})",
            "POST <its scoring_uri>/v1/chat/completions  # the request below as messages, max_tokens, ...",
        ]
    return show(
        ctx,
        "score",
        {
            "calls": calls,
            "request_file": str(ctx.workspace / "score" / "sample_score.json"),
            "request": {
                "input_data": {
                    "input_string": [
                        f"<a random conversation of {split}.jsonl (seed {cfg.seed}) up to its last user turn>"
                    ],
                    "parameters": parameters,
                },
                "params": {},
            },
        },
    )


def teardown(ctx: Context, call: StageCall) -> Outputs:
    recorded = call.upstream.deploy.endpoint_name
    endpoint = recorded or f"{ctx.cfg.deploy.endpoint_name_prefix}<unix time>"
    calls = [f"online_endpoints.begin_delete(name={endpoint!r})  # and its deployments"]
    if call.upstream.deploy.endpoint_kind == "serverless" or (not recorded and _job_route(ctx)):
        calls = [f"serverless_endpoints.begin_delete({endpoint!r})"]
    if call.options.compute:
        cluster = call.upstream.check_compute.name or ctx.cfg.compute.name
        calls.append(f"compute.begin_delete({cluster!r})  # only if check-compute created it")
    return show(ctx, "teardown", {"calls": calls})
