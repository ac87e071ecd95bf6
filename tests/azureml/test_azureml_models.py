"""pick-model on Azure ML: archived and retired models, allow-lists in tags or in system_metadata, model
defaults that are not component inputs, `pick-model --list`, pinned versions."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from fakes.azureml import COMPONENT_INPUTS, PHI4_FINETUNE_SKUS, PHI4_INFERENCE_SKUS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
JOB_PUT = r"/workspaces/[^/]+/jobs/[^/]+$"


def _job_inputs(az) -> dict:
    node = next(iter(az.service.one("PUT", JOB_PUT).body["properties"]["jobs"].values()))
    return {k: v.get("value", v.get("uri")) for k, v in node["inputs"].items()}


def test_the_notebooks_config_is_refused_naming_a_successor_and_nothing_is_created(az) -> None:
    """configs/azureml-phi3-ultrachat.yaml: Phi-3-mini-4k-instruct is archived and its fine-tuning retired
    (system_metadata.deprecation, as azureml-assets has it): exit 2 before any cluster, upload or job."""
    NOTEBOOK_CONFIG = CONFIGS / "azureml-phi3-ultrachat.yaml"

    args = az.args("run")
    args[args.index("--config") + 1] = str(NOTEBOOK_CONFIG)
    result = az.ftctl(*args, code=2)
    assert (
        "error: model.name=Phi-3-mini-4k-instruct (version 15) cannot be fine-tuned: its fine-tuning was "
        "retired on 2025-08-30 and it is archived in the registry"
    ) in result.stderr
    assert "fine-tunable successors in registry 'azureml': Phi-4; pick one with --set model.name=Phi-4" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert az.service.mutations == []
    assert not [r for r in az.service.requests if r.host.endswith(".blob.core.windows.net")]
    assert az.service.jobs == {} and az.service.computes == {}
    # The line it names works; the notebook's NCv3 deploy size is then refused, naming the allowed sizes.
    args = az.args("--set", "model.name=Phi-4", "pick-model")
    args[args.index("--config") + 1] = str(NOTEBOOK_CONFIG)
    sized = az.ftctl(*args, code=2)
    assert "deploy.instance_type=Standard_NC6s_v3 is a retired VM size" in sized.stderr
    assert "allowed for this model: Standard_NC24ads_A100_v4, Standard_NC48ads_A100_v4" in sized.stderr
    args = az.args("--set", "model.name=Phi-4", "--set", "deploy.instance_type=Standard_NC40ads_H100_v5")
    args[args.index("--config") + 1] = str(NOTEBOOK_CONFIG)
    az.ftctl(*args, "pick-model")
    assert az.outputs("pick-model")["deploy_instance_type"] == "Standard_NC40ads_H100_v5"


def test_allow_lists_sizes_and_dates_from_system_metadata(az) -> None:
    az("run", "--to", "pick-model")
    outputs = az.outputs("pick-model")
    assert outputs["allow_list_source"] == "system_metadata.supportedComputes"
    assert outputs["finetune_compute_allow_list"] == PHI4_FINETUNE_SKUS
    assert outputs["inference_compute_allow_list"] == PHI4_INFERENCE_SKUS
    assert outputs["finetuning_tasks"] == ["chat-completion"] and outputs["finetunable"] is True
    # model_specific_defaults stayed a tag (JSON, as publishing writes dicts).
    assert outputs["defaults_source"] == "tags" and outputs["model_specific_defaults"]["deepspeed_stage"] == 3
    # deploy.instance_type unset: the first recommended inference size within the allow-list.
    assert outputs["deploy_instance_type"] == "Standard_NC24ads_A100_v4"
    assert outputs["deploy_instance_type_source"] == "the model's recommended inference size"
    # The allow-list is applied (case-insensitively) before a cluster is created.
    refused = az("--set", "compute.size=standard_nc24s_v3", "check-compute", code=2)
    assert "'standard_nc24s_v3' is not in the allow-list" in refused.stderr
    assert "system_metadata.supportedComputes" in refused.stderr
    assert az.service.find("PUT", r"/computes/") == []
    az("--set", "compute.size=standard_nc24ads_a100_v4", "check-compute")


def test_the_old_tags_layout_is_still_read(az) -> None:
    """An older version in the notebook's layout (allow-list and date tags, properties.finetuning-tasks)."""
    az.service.registry_models.clear()
    az.service.add_phi3(archived=False, in_system_metadata=False, version="14")
    az.settings.append("model.name=Phi-3-mini-4k-instruct")
    refused = az("run", "--to", "pick-model", code=2)
    assert "its fine-tuning was retired on 2025-08-30" in refused.stderr
    assert "archived" not in refused.stderr.split("hint:")[0]


def test_a_deploy_size_outside_the_allow_list_or_retired_is_refused_naming_the_allowed_ones(az) -> None:
    for size, said in (
        ("Standard_NC6s_v3", "deploy.instance_type=Standard_NC6s_v3 is a retired VM size"),
        ("Standard_NC4as_T4_v3", "deploy.instance_type=Standard_NC4as_T4_v3 is not in the model's inference"),
    ):
        refused = az("--set", f"deploy.instance_type={size}", "run", "--to", "pick-model", code=2)
        assert said in refused.stderr and ", ".join(PHI4_INFERENCE_SKUS) in refused.stderr
        assert len(refused.stderr.split("error: ")[1].splitlines()[0]) < 400
    assert az.service.mutations == []
    # Set after pick-model ran: deploy refuses it too, before any endpoint exists.
    az("run", "--to", "register")
    refused = az("--set", "deploy.instance_type=Standard_NC6s_v3", "deploy", code=2)
    assert "is a retired VM size" in refused.stderr
    assert az.service.find("PUT", r"/onlineEndpoints/") == []


def test_no_allow_list_means_the_notebooks_deny_list(az) -> None:
    az.service.registry_models.clear()
    az.service.add_registry_model("tiny-chat", "3", tags={"task": "chat-completion"})
    az.settings.append("model.name=tiny-chat")
    az("run", "--to", "pick-model")
    refused = az("--set", "compute.size=Standard_NC24", "check-compute", code=2)
    assert "'Standard_NC24' is in the deny list" in refused.stderr


def test_model_defaults_that_are_not_component_inputs_are_dropped_and_reported(az) -> None:
    defaults = {
        "learning_rate_min": 5e-7,
        "not_a_component_input": 3,
        "optim": "adafactor",  # a component input ftctl's finetune section does not have
        "apply_lora": True,  # a boolean: sent as the "true" string enum
        "apply_ort": "false",
        "precision": 16,  # an int: sent as the "16" string enum
        "num_nodes": 1,  # ftctl's name for num_nodes_finetune
    }
    az.service.registry_models.clear()
    az.service.add_registry_model(
        "tiny-chat", "3", tags={"task": "chat-completion", "model_specific_defaults": repr(defaults)}
    )
    # A newer component version without apply_ort: what is sent follows what the component declares.
    inputs = {k: v for k, v in COMPONENT_INPUTS.items() if k != "apply_ort"}
    az.service.add_component("chat_completion_pipeline", "0.0.90", inputs=inputs)
    az.settings.append("model.name=tiny-chat")
    result = az("run", "--to", "submit")
    sent = _job_inputs(az)
    assert sent["optim"] == "adafactor"
    assert sent["apply_lora"] == "true"
    assert sent["precision"] == "16"
    assert sent["num_nodes_finetune"] == "1"
    for dropped in ("learning_rate_min", "not_a_component_input", "apply_ort"):
        assert dropped not in sent
        assert dropped in result.stderr
    assert "not sent to chat_completion_pipeline 0.0.90:" in result.stderr
    submit = az.outputs("submit")
    assert submit["component_id"].endswith("/chat_completion_pipeline/versions/0.0.90")
    assert any(d.startswith("apply_ort='false' (model default; not an input") for d in submit["dropped"])


def test_set_beats_the_model_default_and_bad_enum_values_are_refused(az) -> None:
    az("run", "--to", "prepare-data")
    az("--set", "finetune.learning_rate=1e-5", "--set", "finetune.lr_scheduler_type=linear", "submit")
    sent = _job_inputs(az)
    assert float(sent["learning_rate"]) == 1e-5 and sent["lr_scheduler_type"] == "linear"
    bad = az("--set", "finetune.precision=bf16", "submit", "--force", code=2)
    assert (
        "finetune input precision='bf16' is not one of the values the component accepts: 32, 16" in bad.stderr
    )


def test_use_model_defaults_off_sends_the_config_only(az) -> None:
    az("run", "--to", "prepare-data")
    az("--set", "finetune.use_model_defaults=false", "submit")
    sent = _job_inputs(az)
    assert sent["num_train_epochs"] == "3"  # the config file's value, not the model default 1
    assert "save_total_limit" not in sent  # not in the config file, so the component default applies


def test_pick_model_list_shows_the_chat_completion_models(az) -> None:
    az.service.add_registry_model("bert-base-uncased", "10", tags={"task": "fill-mask"})
    az.service.add_registry_model("Phi-4-mini-instruct", "2", tags={"task": "chat-completion"})
    listed = az.json("pick-model", "--list")
    # Phi-3 and Phi-4 carry their task in system_metadata, which model containers do not list.
    assert [m["name"] for m in listed["models"]] == ["Phi-4-mini-instruct"]
    everything = az.json("pick-model", "--list", "--all")
    assert "bert-base-uncased" in [m["name"] for m in everything["models"]]
    table = az("pick-model", "--list")
    assert "Phi-4-mini-instruct" in table.stdout and "bert" not in table.stdout
    assert not (az.workspace / "state.json").exists()  # --list records nothing


def test_a_pinned_version_and_a_missing_model(az) -> None:
    az.service.add_phi4(version="7")
    az.service.add_phi4(version="8")
    az("--set", "model.revision=7", "run", "--to", "pick-model")
    assert az.outputs("pick-model")["version"] == "7"
    assert az.service.find("GET", r"/models/Phi-4/versions$") == []  # no label lookup
    missing = az("--set", "model.name=no-such-model", "pick-model", code=2)
    assert "no-such-model" in missing.stderr
    assert "ftctl pick-model --list" in missing.stderr


def test_successors_are_judged_from_each_models_latest_version(az) -> None:
    az.service.add_phi_family()
    args = az.args("run", "--to", "pick-model")
    NOTEBOOK_CONFIG = CONFIGS / "azureml-phi3-ultrachat.yaml"

    args[args.index("--config") + 1] = str(NOTEBOOK_CONFIG)
    refused = az.ftctl(*args, code=2)
    # Phi-3.5 is archived, Phi-4-multimodal cannot be fine-tuned, Llama is another family.
    assert (
        "successors in registry 'azureml': Phi-4, Phi-4-mini-instruct; pick one with --set model.name=Phi-4"
        in (refused.stderr)
    )
    listed = {m["name"]: m for m in az.json("pick-model", "--list")["models"]}
    assert listed["Phi-4-multimodal-instruct"]["finetunable"] is False
    assert listed["Phi-3.5-mini-instruct"]["finetunable"] is False  # fine-tuning retired


def test_a_model_that_cannot_be_fine_tuned_or_is_gone(az) -> None:
    az.service.add_phi_family()
    result = az("--set", "model.name=Phi-4-multimodal-instruct", "run", "--to", "pick-model")
    assert "Phi-4-multimodal-instruct 1 does not say it can be fine-tuned" in result.stderr
    assert "--set model.name=Phi-4" in result.stderr
    # Phi-3-mini-4k-instruct is there too, but its fine-tuning was retired; Phi-3.5 is archived.
    assert az.outputs("pick-model")["successors"] == ["Phi-4", "Phi-4-mini-instruct"]
    # A model the registry no longer has: the error names the family's fine-tunable models.
    missing = az("--set", "model.name=Phi-2", "pick-model", code=2)
    assert "Phi-2 does not exist" in missing.stderr
    assert "hint: fine-tunable successors in registry 'azureml': Phi-4, Phi-4-mini-instruct" in missing.stderr


def test_the_successor_config_file(az) -> None:
    """configs/azureml-phi4-mini-ultrachat.yaml: the notebook's flow on the successor model."""
    from pathlib import Path

    import yaml

    configs = Path(__file__).resolve().parents[2] / "configs"
    config = yaml.safe_load((configs / "azureml-phi4-mini-ultrachat.yaml").read_text())
    assert config["model"]["name"] == "Phi-4-mini-instruct" and config["backend"] == "azureml"
    az.service.add_phi_family()
    args = az.args("run", "--to", "pick-model")
    args[args.index("--config") + 1] = str(configs / "azureml-phi4-mini-ultrachat.yaml")
    result = az.ftctl(*args)
    assert "warning" not in result.stderr, result.stderr
    assert az.outputs("pick-model")["name"] == "Phi-4-mini-instruct"
