"""The Azure ML backend's pure parts: model metadata (tags / system_metadata), component inputs, workspace
config discovery. No SDK calls."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from ftctl.backends.azureml.client import find_workspace_config
from ftctl.backends.azureml.metadata import (
    compute_lists,
    inference_size,
    is_chat_completion,
    is_finetunable,
    lifecycle,
    model_defaults,
    parse_list,
    retired,
    size_retired,
    supported_computes,
)
from ftctl.backends.azureml.params import Declared, FinetuneSources, coerce, display_params, finetune_inputs
from ftctl.errors import UsageError
from ftctl.stages.shared import display_name

YES_NO = Declared("string", ["true", "false"], "false")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "['Standard_NC24ads_A100_v4', 'Standard_ND96asr_v4']",
            ["Standard_NC24ads_A100_v4", "Standard_ND96asr_v4"],
        ),
        ('["A", "B"]', ["A", "B"]),
        ("[Standard_NC6s_v3, Standard_NC12s_v3]", ["Standard_NC6s_v3", "Standard_NC12s_v3"]),
        ("A, B", ["A", "B"]),
        (["A", {"name": "B"}], ["A", "B"]),
        ("", None),
        (None, None),
    ],
)
def test_parse_list(value, expected) -> None:
    assert parse_list(value) == expected


@pytest.mark.parametrize(
    "metadata",
    [
        {"supportedComputes": {"finetune": ["A"], "inference": ["B"]}},
        {"supported_computes": {"FineTuning": "A", "Inference": "[B]"}},
        {
            "SupportedComputes": [
                {"scenario": "finetune", "skus": ["A"]},
                {"type": "inference", "vmSizes": ["B"]},
            ]
        },
        {"supportedComputes": json.dumps({"training": ["A"], "deployment": ["B"]})},
    ],
)
def test_supported_computes_shapes(metadata) -> None:
    assert supported_computes(metadata) == {"finetune": ["A"], "inference": ["B"]}


def test_system_metadata_wins_over_tags_and_either_is_read() -> None:
    tags = {"finetune_compute_allow_list": "['T']"}
    meta = {"supportedComputes": {"finetuneComputes": ["M"]}}  # azureml-assets' key since 2026-06
    assert compute_lists(tags, meta) == (["M"], None, "system_metadata.supportedComputes")
    assert compute_lists(tags, None) == (["T"], None, "tags")
    assert compute_lists({}, meta) == (["M"], None, "system_metadata.supportedComputes")
    assert compute_lists({}, None) == (None, None, "none")
    assert model_defaults({"model_specific_defaults": "{'apply_lora': 'true'}"}, None) == (
        {"apply_lora": "true"},
        "tags",
    )
    assert model_defaults({}, {"modelSpecificDefaults": {"lora_r": 16}}) == (
        {"lora_r": 16},
        "system_metadata",
    )


def test_lifecycle() -> None:
    tags = {"FinetuneRetirementDate": "2025-08-30", "InferenceDeprecationDate": "2027-01-31", "other": "x"}
    notes = lifecycle(tags, is_archived=True, stage=None, today=date(2026, 11, 22))
    assert notes == [
        "it is archived in the registry (no new fine-tuning or deployments are supported)",
        "fine-tuning was retired on 2025-08-30",
        "inference will be deprecated on 2027-01-31",
    ]
    # system_metadata.deprecation (ISO timestamps) first; a tag of the same name does not repeat it.
    meta = {"deprecation": {"finetuneRetirementDate": "2025-08-30T00:00:00.000000Z"}}
    stale = {"FinetuneRetirementDate": "2099-01-01"}
    assert lifecycle(stale, False, None, date(2026, 11, 22), meta) == [
        "fine-tuning was retired on 2025-08-30"
    ]
    assert retired(stale, date(2026, 11, 22), "finetune", meta) == date(2025, 8, 30)
    assert retired({}, date(2026, 11, 22), "finetune", None) is None
    assert lifecycle({}, is_archived=False, stage="Archived", today=date(2026, 1, 1))[0].startswith(
        "it is archived"
    )
    assert lifecycle({}, is_archived=False, stage=None, today=date(2026, 1, 1)) == []


def test_coerce_follows_the_declared_type() -> None:
    assert coerce("apply_lora", True, YES_NO) == "true"
    assert coerce("apply_lora", "True", YES_NO) == "true"
    assert coerce("deepspeed_stage", 3, Declared("string", ["2", "3"])) == "3"
    assert coerce("precision", 16.0, Declared("string", ["32", "16"])) == "16"
    assert coerce("num_train_epochs", "3", Declared("integer")) == 3
    assert coerce("learning_rate", "5e-6", Declared("number")) == 5e-6
    with pytest.raises(UsageError, match="one of the values the component accepts: true, false"):
        coerce("apply_lora", "maybe", YES_NO)
    with pytest.raises(UsageError, match="must be an integer"):
        coerce("num_train_epochs", 1.5, Declared("integer"))


def test_finetune_inputs_merge_restrict_and_report() -> None:
    declared = {
        "apply_lora": YES_NO,
        "learning_rate": Declared("number"),
        "num_train_epochs": Declared("integer"),
        "num_nodes_finetune": Declared("integer"),
        "deepspeed": Declared("uri_file"),
        "number_of_gpu_to_use_finetuning": Declared("integer"),
    }
    result = finetune_inputs(
        FinetuneSources(
            values={
                "apply_lora": False,
                "learning_rate": 1e-4,
                "num_nodes": 2,
                "max_eval_samples": 64,
                "seed": 1,
            },
            set_keys={"apply_lora", "learning_rate", "num_nodes", "max_eval_samples", "seed"},
            explicit={"learning_rate"},
            model_defaults={
                "apply_lora": "true",
                "learning_rate": 5e-6,
                "learning_rate_min": 5e-7,
                "deepspeed": "x.json",
                "number_of_gpu_to_use_finetuning": 8,
            },
            use_model_defaults=True,
        ),
        declared=declared,
        reserved={"number_of_gpu_to_use_finetuning"},
    )
    assert result.inputs == {"apply_lora": "true", "learning_rate": 1e-4, "num_nodes_finetune": 2}
    assert "kept finetune.learning_rate=0.0001 over the model default 5e-06" in result.notes
    assert sorted(d.split("=")[0] for d in result.dropped) == [
        "deepspeed",
        "learning_rate_min",
        "max_eval_samples",
        "number_of_gpu_to_use_finetuning",
        "seed",
    ]


def test_display_name_is_the_notebooks() -> None:
    declared = {"lr_scheduler_type": Declared("string", None, "linear")}
    inputs = {
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "apply_deepspeed": "true",
        "deepspeed_stage": "3",
        "apply_lora": "false",
    }
    name = display_name("Phi-3-mini-4k-instruct", display_params(inputs, declared), gpus_per_node=8)
    assert name == "Phi-3-mini-4k-instruct-ultrachat-bs64-linear-ds3-nolora-save_limit-1-seqlen-1"


def test_find_workspace_config_skips_other_config_files(tmp_path: Path) -> None:
    (tmp_path / ".azureml").mkdir()
    workspace = tmp_path / ".azureml" / "config.json"
    workspace.write_text(json.dumps({"subscription_id": "s", "resource_group": "r", "workspace_name": "w"}))
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (inner / "config.json").write_text('{"model_type": "phi3"}')
    assert find_workspace_config(inner) == workspace
    scope = tmp_path / "a" / "config.json"
    scope.write_text(
        json.dumps(
            {
                "Scope": "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices"
                "/workspaces/w"
            }
        )
    )
    assert find_workspace_config(inner) == scope


def test_fine_tunable_from_system_metadata_tasks_and_sizes() -> None:
    today = date(2026, 11, 22)
    meta = {"tasks": {"fineTuningTasks": ["chat-completion"], "inferenceTasks": ["chat-completion"]}}
    assert is_finetunable({}, None, today, meta) and is_chat_completion({}, None, meta)
    assert not is_finetunable({}, None, today, {"tasks": {"inferenceTasks": ["chat-completion"]}})
    assert is_finetunable({}, {"finetuning-tasks": "chat-completion"}, today)  # older versions
    gone = {**meta, "deprecation": {"finetuneRetirementDate": "2025-08-30T00:00:00Z"}}
    assert not is_finetunable({}, None, today, gone)
    assert size_retired("Standard_NC6s_v3") and size_retired("standard_nc24rs_v3")
    assert not size_retired("Standard_NC4as_T4_v3") and not size_retired("Standard_NC24ads_A100_v4")
    allow = ["Standard_NC6s_v3", "Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4"]
    assert (
        inference_size(allow, ["Standard_NC6s_v3", "Standard_NC48ads_A100_v4"]) == "Standard_NC48ads_A100_v4"
    )
    assert inference_size(allow, []) == "Standard_NC24ads_A100_v4"
    assert inference_size(None, []) is None
