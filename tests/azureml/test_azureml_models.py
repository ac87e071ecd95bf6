"""pick-model on Azure ML: archived and retired models, allow-lists in tags or in system_metadata, model
defaults that are not component inputs, `pick-model --list`, pinned versions."""

from __future__ import annotations

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from fakes.azureml import COMPONENT_INPUTS, PHI3_FINETUNE_SKUS

JOB_PUT = r"/workspaces/[^/]+/jobs/[^/]+$"


def _job_inputs(az) -> dict:
    node = next(iter(az.service.one("PUT", JOB_PUT).body["properties"]["jobs"].values()))
    return {k: v.get("value", v.get("uri")) for k, v in node["inputs"].items()}


def test_an_archived_model_gives_a_clear_warning(az) -> None:
    az.service.registry_models.clear()
    az.service.add_phi3(archived=True)
    result = az("run", "--to", "pick-model")
    assert "warning: Phi-3-mini-4k-instruct 15: it is archived in the registry" in result.stderr
    assert "warning: Phi-3-mini-4k-instruct 15: fine-tuning was retired on 2025-08-30" in result.stderr
    assert "`ftctl pick-model --list`" in result.stderr
    outputs = az.outputs("pick-model")
    assert outputs["archived"] is True
    assert any("archived" in note for note in outputs["lifecycle"])


def test_allow_lists_and_defaults_from_system_metadata(az) -> None:
    az.service.registry_models.clear()
    az.service.add_phi3(in_system_metadata=True)
    az("run", "--to", "pick-model")
    outputs = az.outputs("pick-model")
    assert outputs["allow_list_source"] == "system_metadata.supportedComputes"
    assert outputs["finetune_compute_allow_list"] == PHI3_FINETUNE_SKUS
    assert "Standard_NC6s_v3" in outputs["inference_compute_allow_list"]
    assert outputs["defaults_source"] == "system_metadata"
    assert outputs["model_specific_defaults"]["apply_lora"] == "true"
    # The allow-list is applied (case-insensitively) before a cluster is created.
    refused = az("--set", "compute.size=standard_nc24s_v3", "check-compute", code=2)
    assert "'standard_nc24s_v3' is not in the allow-list" in refused.stderr
    assert "system_metadata.supportedComputes" in refused.stderr
    assert az.service.find("PUT", r"/computes/") == []
    az("--set", "compute.size=standard_nc24ads_a100_v4", "check-compute")


def test_the_inference_allow_list_gates_the_instance_type(az) -> None:
    az.service.registry_models.clear()
    az.service.add_phi3(in_system_metadata=True)
    az("run", "--to", "register")
    refused = az("--set", "deploy.instance_type=Standard_NC4as_T4_v3", "deploy", code=2)
    assert (
        "'Standard_NC4as_T4_v3' is not in the allow-list (the model's inference allow-list" in refused.stderr
    )
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
    assert [m["name"] for m in listed["models"]] == ["Phi-3-mini-4k-instruct", "Phi-4-mini-instruct"]
    everything = az.json("pick-model", "--list", "--all")
    assert "bert-base-uncased" in [m["name"] for m in everything["models"]]
    table = az("pick-model", "--list")
    assert "Phi-4-mini-instruct" in table.stdout and "bert" not in table.stdout
    assert not (az.workspace / "state.json").exists()  # --list records nothing


def test_a_pinned_version_and_a_missing_model(az) -> None:
    az.service.add_phi3(version="14")
    az.service.add_phi3(version="15")
    az("--set", "model.revision=14", "run", "--to", "pick-model")
    assert az.outputs("pick-model")["version"] == "14"
    assert az.service.find("GET", r"/models/Phi-3-mini-4k-instruct/versions$") == []  # no label lookup
    missing = az("--set", "model.name=no-such-model", "pick-model", code=2)
    assert "no-such-model" in missing.stderr
    assert "ftctl pick-model --list" in missing.stderr


def test_an_archived_model_names_its_fine_tunable_successors(az) -> None:
    az.service.registry_models.clear()
    az.service.add_phi3(archived=True)
    az.service.add_phi_family()
    result = az("run", "--to", "pick-model")
    assert (
        "warning: fine-tunable successors in registry 'azureml': Phi-4-mini-instruct; pick one with "
        "--set model.name=Phi-4-mini-instruct"
    ) in result.stderr
    outputs = az.outputs("pick-model")
    assert outputs["finetunable"] is False and outputs["successors"] == ["Phi-4-mini-instruct"]
    # The suggestion works as given.
    az("--set", "model.name=Phi-4-mini-instruct", "pick-model")
    outputs = az.outputs("pick-model")
    assert outputs["name"] == "Phi-4-mini-instruct" and outputs["finetunable"] is True
    assert outputs["successors"] == [] and outputs["lifecycle"] == []
    listed = {m["name"]: m for m in az.json("pick-model", "--list")["models"]}
    assert listed["Phi-4-multimodal-instruct"]["finetunable"] is False
    assert listed["Phi-3.5-mini-instruct"]["finetunable"] is False  # fine-tuning retired


def test_a_model_that_cannot_be_fine_tuned_or_is_gone(az) -> None:
    az.service.add_phi_family()
    result = az("--set", "model.name=Phi-4-multimodal-instruct", "run", "--to", "pick-model")
    assert "Phi-4-multimodal-instruct 1 does not say it can be fine-tuned" in result.stderr
    assert "--set model.name=Phi-4-mini-instruct" in result.stderr
    # Phi-3-mini-4k-instruct is there too, but its fine-tuning was retired; Phi-3.5 is archived.
    assert az.outputs("pick-model")["successors"] == ["Phi-4-mini-instruct"]
    # A model the registry no longer has: the error names the family's fine-tunable models.
    missing = az("--set", "model.name=Phi-2", "pick-model", code=2)
    assert "Phi-2 does not exist" in missing.stderr
    assert "hint: fine-tunable successors in registry 'azureml': Phi-4-mini-instruct" in missing.stderr


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
