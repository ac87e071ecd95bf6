"""`ftctl plan` and submit's check on --backend azureml: token counts with a tokenizer found on this
machine (a folder, or the hub cache laid out as the hub serves it) or a labelled estimate, the run's size
from the component inputs submit would send, memory against the instance type's GPUs, and every refusal
and warning, before anything is sent to Azure ML."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from ftctl.backends.azureml import gpus, preflight
from ftctl.models.layout import shipped_model_dir
from ftctl.plan import GiB, ModelShape

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _jobs(az) -> int:
    return len(az.service.jobs)


def _estimate(messages: list[dict[str, str]]) -> tuple[int, int]:
    """(tokens, assistant tokens) of one conversation by the documented estimate, computed here."""
    tokens = assistant = 0
    for m in messages:
        n = math.ceil(len(m["content"]) / 4.0)
        tokens += n + 4
        assistant += n + 1 if m["role"] == "assistant" else 0
    return tokens, assistant


def test_plan_without_a_tokenizer_estimates_and_says_so(az) -> None:
    az("run", "--to", "prepare-data")
    requests = len(az.service.requests)
    text = az("plan").stdout
    data = az.json("plan")
    assert len(az.service.requests) == requests  # the plan asks Azure ML nothing
    assert data["backend"] == "azureml" and data["tokens_exact"] is False
    assert data["tokens_source"].startswith("ESTIMATED") and "tokens (ESTIMATED" in text
    train = Path(az.outputs("prepare-data")["files"]["train_sft"]["path"])
    rows = [json.loads(line)["messages"] for line in train.read_text().splitlines()]
    counted = [_estimate(m) for m in rows]
    split = next(s for s in data["splits"] if s["split"] == "train_sft")
    assert split["conversations"] == len(rows)
    assert split["tokens"] == sum(t for t, _ in counted)
    assert split["assistant_tokens"] == sum(a for _, a in counted)
    assert split["max"] == max(t for t, _ in counted)
    run = data["run"]
    # The config's batch 1 x accumulation 1 x 1 GPU of the cluster, one row per conversation, 1 epoch.
    assert run["packing"] is False and run["devices"] == 1
    assert run["steps"] == len(rows) and run["effective_batch"] == 1
    assert data["time"] is None and "not estimated on Azure ML" in text
    assert "ok: submit would start this run" in text


def test_memory_is_checked_against_the_instance_types_gpu(az) -> None:
    az("run", "--to", "prepare-data")
    data = az.json("plan")
    memory = data["memory"]
    assert data["settings"]["instance_type"] == "Standard_NC24ads_A100_v4"
    assert memory["limit_bytes"] == 80 * GiB and "learn.microsoft.com" in memory["limit_source"]
    assert memory["verdict"] == "fits"
    # Phi-4's weights at 16 bits (the model's default precision) under LoRA: 2 bytes a parameter.
    assert memory["components"]["weights"] == 2 * 14_659_507_200
    source = data["model"]["shape_source"]
    assert source == "config.json of microsoft/phi-4 on the Hugging Face hub"


def _small_model(az) -> None:
    """A 3.8B fine-tunable model (Phi-4 at 14.7B leaves no batch size that fits a full fine-tune)."""
    az.service.add_phi_family()
    az.settings.append("model.name=Phi-4-mini-instruct")


def test_submit_refuses_a_run_that_cannot_fit_and_sends_nothing(az) -> None:
    _small_model(az)
    az("run", "--to", "prepare-data")
    big = ["--set", "finetune.apply_lora=false", "--set", "finetune.precision=32"]
    big += ["--set", "finetune.per_device_train_batch_size=256"]
    plan = az(*big, "plan", code=2)
    assert "submit would refuse this run: out of memory" in plan.stderr
    assert "per_device_train_batch_size=" in plan.stderr  # the change that would fit
    refused = az(*big, "submit", code=2)
    assert "submit refused: out of memory" in refused.stderr and "--no-plan" in refused.stderr
    assert _jobs(az) == 0
    assert "Traceback" not in refused.stderr
    az(*big, "submit", "--no-plan")  # the user's call: it is submitted
    assert _jobs(az) == 1


def test_max_seq_length_above_the_context_is_refused(az) -> None:
    az("run", "--to", "prepare-data")
    refused = az("--set", "finetune.max_seq_length=32768", "submit", code=2)
    assert "finetune.max_seq_length 32768 is above the model's context length 16384" in refused.stderr
    assert _jobs(az) == 0


def test_too_few_rows_left_for_the_service_are_refused(az, tmp_path) -> None:
    """12 conversations (prepare-data's minimum is 10), 4 of which max_seq_length cuts before their
    reply: 8 rows would reach the service, whose preprocess refuses fewer than 10."""
    folder = tmp_path / "few"
    folder.mkdir()
    for split in ("train_sft", "test_sft", "train_gen", "test_gen"):
        rows = [
            {"messages": [{"role": "user", "content": ("why? " * 40 if i < 4 else f"{i}?")},
                          {"role": "assistant", "content": f"because {i}."}]}
            for i in range(12)
        ]  # fmt: skip
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = ["--set", f"data.dataset={folder}", "--set", "finetune.max_seq_length=32"]
    az(*settings, "run", "--to", "prepare-data")
    refused = az(*settings, "plan", code=2)
    assert "train_sft has 8 conversations to train on; the service's preprocess needs at least 10" in (
        refused.stderr
    )


def test_truncation_is_a_warning_and_submit_goes_on(az) -> None:
    az("run", "--to", "prepare-data")
    data = az.json("--set", "finetune.max_seq_length=16", "plan")
    warnings = [f["message"] for f in data["findings"] if f["level"] == "warning"]
    assert any("max_seq_length 16 cuts" in w for w in warnings), data["findings"]
    submitted = az("--set", "finetune.max_seq_length=16", "submit")
    assert "max_seq_length 16 cuts" in submitted.stderr
    assert "plan: 40 steps" in submitted.stderr
    assert _jobs(az) == 1


def _hub_cache(root: Path, hub_id: str, files: tuple[str, ...]) -> Path:
    """A Hugging Face hub cache holding `files` of the built-in model under `hub_id`, laid out as
    huggingface_hub writes it (blobs, a snapshot of links, refs/main)."""
    repo = root / ("models--" + hub_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name in files:
        blob = repo / "blobs" / f"blob-{name}"
        shutil.copyfile(shipped_model_dir() / name, blob)
        (snapshot / name).symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _use_hub_cache(monkeypatch, cache: Path) -> None:
    """HF_HUB_CACHE for this test: huggingface_hub reads the variable once, when first imported (a
    fresh `ftctl` process reads it; this in-process run also sets the value the library holds)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))


def _trainer_counts(folder: Path, path: Path) -> tuple[int, int]:
    """(tokens, assistant tokens) of a split as the local trainer tokenizes it."""
    from ftctl.backends.local import trainer as tr
    from ftctl.data.chat_tokens import load_chat_tokenizer

    examples, _ = tr.load_examples(load_chat_tokenizer(folder), path, 1 << 30)
    labelled = sum(sum(1 for x in e["labels"] if x != tr.IGNORE_INDEX) for e in examples)
    return sum(len(e["input_ids"]) for e in examples), labelled


def test_a_cached_tokenizer_of_the_registry_model_counts_exactly(az, tmp_path, monkeypatch) -> None:
    pytest.importorskip("transformers")
    cache = tmp_path / "hf-cache"
    snapshot = _hub_cache(cache, "microsoft/phi-4", TOKENIZER_FILES)
    _use_hub_cache(monkeypatch, cache)
    az("run", "--to", "prepare-data")
    data = az.json("plan")
    assert data["tokens_exact"] is True and str(snapshot) in data["tokens_source"]
    train = Path(az.outputs("prepare-data")["files"]["train_sft"]["path"])
    split = next(s for s in data["splits"] if s["split"] == "train_sft")
    assert (split["tokens"], split["assistant_tokens"]) == _trainer_counts(snapshot, train)
    assert split["end_of_turn_labelled"] == split["conversations"]
    # No config.json in the cache: the shape is still the registry model's, from ftctl's table.
    assert data["model"]["parameters"] == 14_659_507_200
    # Counted once: the counts are kept in the workspace and read back the next time.
    assert len(list((az.workspace / "plan").glob("tokens-train_sft-*.json"))) == 1
    assert az.json("plan")["splits"] == data["splits"]


def test_plan_tokenizer_folder_and_its_config(az) -> None:
    pytest.importorskip("transformers")
    az("run", "--to", "prepare-data")
    folder = shipped_model_dir()
    settings = ["--set", f"plan.tokenizer={folder}", "--set", "finetune.max_seq_length=1024"]
    data = az.json(*settings, "plan")
    assert data["tokens_exact"] is True
    assert data["model"]["shape_source"] == f"config.json in {folder}"
    config = json.loads((folder / "config.json").read_text())
    assert data["model"]["context_length"] == config["max_position_embeddings"]


def test_a_plan_tokenizer_that_is_nowhere_is_a_clear_error(az, tmp_path, monkeypatch) -> None:
    pytest.importorskip("huggingface_hub")
    _use_hub_cache(monkeypatch, tmp_path / "empty-cache")
    az("run", "--to", "prepare-data")
    refused = az("--set", "plan.tokenizer=someone/not-cached", "plan", code=2)
    assert "plan.tokenizer 'someone/not-cached': not a folder" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_plan_needs_the_prepared_data(az) -> None:
    refused = az("plan", code=2)
    assert "ftctl plan needs prepare-data" in refused.stderr


def test_the_gpu_table_names_its_sources_and_the_model_table_adds_up() -> None:
    for size in gpus.SIZES:
        assert size.source.startswith("https://learn.microsoft.com/"), size
        assert size.gpus >= 1 and size.memory_gib >= 16
        assert gpus.gpu_size(size.name.upper()) is size
    for name, model in gpus.MODELS.items():
        # The parameter count is the sum of the config's weight shapes.
        assert ModelShape.from_config(model.config, None).parameters == model.parameters, name
        assert gpus.known_model(f"azureml://registries/azureml/models/{name}/versions/7") is model


def test_the_estimate_counts_what_max_seq_length_keeps() -> None:
    messages = [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "y" * 40}]
    whole = preflight.estimate_conversation(messages, 1000, 4.0)
    assert (whole.tokens, whole.assistant, whole.assistant_kept) == (28, 11, 11)
    # The reply starts after 14 (user) + 2 (<|assistant|>, newline) tokens: 20 keeps 4 of its 11.
    assert preflight.estimate_conversation(messages, 20, 4.0).assistant_kept == 4
    assert preflight.estimate_conversation(messages, 10, 4.0).assistant_kept == 0


def test_tight_memory_is_a_warning_with_the_safer_setting(az) -> None:
    _small_model(az)
    az("run", "--to", "prepare-data")
    tight = ["--set", "finetune.apply_lora=false", "--set", "finetune.precision=32"]
    tight += ["--set", "finetune.per_device_train_batch_size=128"]
    data = az.json(*tight, "plan")
    assert data["memory"]["verdict"] == "tight" and data["ok"] is True
    submitted = az(*tight, "submit", "--no-wait", code=None)
    assert "memory is tight" in submitted.stderr and "gradient_accumulation_steps x2" in submitted.stderr
    assert _jobs(az) == 1


def test_a_completed_jobs_measured_pace_gives_the_next_plan_a_time(az, tracking) -> None:
    """submit records the fine-tuning step's pace (the Trainer's train_runtime over its last step: the
    fake's job logs 612.3 s at step 20); the next plan with the same settings on the same VM size turns
    it into a time, without asking Azure ML; other settings get none."""
    az("run", "--to", "submit")
    pace = az.outputs("submit")["pace"]
    assert pace["steps"] == 20 and pace["train_runtime_s"] == 612.3
    assert pace["instance_type"] == "Standard_NC24ads_A100_v4" and pace["model"] == "Phi-4"
    requests = len(az.service.requests)
    data = az.json("plan")
    assert len(az.service.requests) == requests
    time = data["time"]
    assert time["step_s"] == pytest.approx(612.3 / 20)
    assert time["train_s"] == pytest.approx(612.3 / 20 * data["run"]["steps"])
    assert time["source"].startswith(f"measured: job {az.outputs('submit')['job_name']} ran 20 steps")
    assert "time: 40 steps x 30.615 s = about 20 min 24 s" in az("plan").stdout
    other = az.json("--set", "finetune.per_device_train_batch_size=2", "plan")
    assert other["time"] is None and "not estimated on Azure ML" in other["time_note"]


def test_no_pace_when_the_metrics_cannot_be_read(az, monkeypatch) -> None:
    """A job whose metrics cannot be read (here: azureml-mlflow missing) still completes; its plan has
    no measured time."""
    from ftctl.backends.azureml import hooks
    from ftctl.errors import UsageError

    def missing(*args, **kwargs):
        raise UsageError("measuring the job's pace needs mlflow and azureml-mlflow")

    monkeypatch.setattr(hooks, "mlflow_client", missing)
    az("run", "--to", "submit")
    assert "pace" not in az.outputs("submit")
    assert az.json("plan")["time"] is None
