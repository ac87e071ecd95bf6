"""The Azure ML backend's plan: what the chat_completion_pipeline job would do, before it costs anything.

No login and no request: it reads the prepared data files, the configuration and what earlier stages
recorded (pick-model's model defaults, check-compute's cluster), and falls back on the configuration
where a stage has not run.

- Tokens: with the model's tokenizer when one is on this machine (plan.tokenizer: a folder, or a hub id
  in the local Hugging Face cache; by default the registry model's hub id when ftctl knows it), counted
  as the local trainer counts them (ftctl.data.chat_tokens: the chat template, loss on assistant replies).
  Without one, an estimate from characters (plan.chars_per_token) plus the Phi-3 template's markers,
  labelled as such everywhere it shows.
- The run: the component's inputs as submit would send them (the configuration's finetune keys and the
  model's defaults), the component's own defaults for the rest (COMPONENT_DEFAULTS), the service's rules
  (no packing; max_seq_length -1 = the model's context length; at least MIN_TRAIN_ROWS rows).
- Memory: ftctl.plan's estimate on one GPU of the cluster's size (ftctl.backends.azureml.gpus).
- Time: from a measured figure only: the pace of the last completed job (submit records the fine-tuning
  step's train_runtime over its steps) when it trained the same model on the same VM size with the same
  batch, sequence and precision settings; otherwise steps and tokens.

`preflight` is what `ftctl submit` runs before it submits a new job.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl import state as st
from ftctl.backends.azureml.gpus import GpuSize, gpu_size, known_model
from ftctl.data.chat_tokens import count_lines, read_conversations
from ftctl.errors import UsageError
from ftctl.plan import (
    PHI3_LINEAR,
    Conversation,
    Finding,
    GiB,
    MemoryEstimate,
    MemorySetup,
    ModelShape,
    Plan,
    RunSize,
    SplitStats,
    TimeEstimate,
    cached_split,
    check,
    estimate_memory,
    fmt_seconds,
    sample_indices,
    submit_check,
)
from ftctl.records import StateView
from ftctl.stages.contract import StageCall
from ftctl.stages.shared import prepared_files

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import State

# chat_completion_pipeline's defaults for the inputs the plan reads, when submit does not send them
# (azureml-assets, version 0.0.82; ../shared/azureml/NOTES.md).
COMPONENT_DEFAULTS: dict[str, Any] = {
    "num_train_epochs": 1,
    "max_steps": -1,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "apply_lora": "false",
    "lora_r": 8,
    "max_seq_length": -1,
    "precision": "32",
    "apply_deepspeed": "false",
    "deepspeed_stage": "2",
    "num_nodes_finetune": 1,
}
MIN_TRAIN_ROWS = 10  # the service's preprocess refuses fewer training rows
TEMPLATE_TOKENS = 4  # per message in Phi-3's template: <|role|>, a newline, <|end|>, a newline
STATS_VERSION = 2  # 2: the cache file holds {stats, rows}, as the local backend's


def _yes(value: Any) -> bool:
    return str(value).lower() == "true"


# --- the job's settings ----------------------------------------------------------------------------


def job_settings(ctx: Context, recorded: StateView) -> tuple[dict[str, Any], list[str]]:
    """The values of the component inputs the plan reads: as submit would send them (the model's
    defaults when pick-model recorded them), else the component's defaults."""
    from ftctl.backends.azureml.dry_run import finetune_inputs_offline

    defaults = recorded.pick_model.model_specific_defaults or None
    sent, dropped = finetune_inputs_offline(ctx, defaults)
    # Which inputs the component declares is known only at submit (from the registry): the plan names
    # only what ftctl itself never sends.
    notes = [f"not sent to the component: {item}" for item in dropped if "not an input" not in item]
    if defaults is None and not recorded.recorded("pick-model"):
        notes.append("pick-model has not run: the model's own defaults are not applied (`ftctl pick-model`)")
    return {**COMPONENT_DEFAULTS, **sent}, notes


# --- the model: its tokenizer and shape -------------------------------------------------------------


def _cached_snapshot(hub_id: str) -> Path | None:
    """The folder of `hub_id` in this machine's Hugging Face cache (nothing is downloaded)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id=hub_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a valid repo id
        return None


def tokenizer_folder(ctx: Context, model_name: str) -> Path | None:
    """Where the model's tokenizer is on this machine: plan.tokenizer (a folder, or a hub id in the local
    cache), else the known hub id of the registry model when it is cached; None when nowhere."""
    configured = ctx.cfg.plan.tokenizer
    if configured:
        folder = Path(configured).expanduser()
        if folder.is_dir():
            return folder
        cached = _cached_snapshot(configured) if "/" in configured and not folder.exists() else None
        if cached is None:
            raise UsageError(
                f"plan.tokenizer {configured!r}: not a folder, and not a model in this machine's "
                "Hugging Face cache",
                hint="point it at a folder with the tokenizer files (tokenizer.json, "
                "tokenizer_config.json), or download the model's tokenizer into the cache first",
            )
        return cached
    known = known_model(model_name)
    return _cached_snapshot(known.hub_id) if known else None


def model_shape(folder: Path | None, model_name: str) -> tuple[ModelShape | None, str]:
    """The model's shape: from config.json beside its tokenizer, else ftctl's table of registry models."""
    if folder is not None and (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{folder}/config.json: cannot read it ({exc})") from None
        return ModelShape.from_config(config, None), f"config.json in {folder}"
    known = known_model(model_name)
    if known is None:
        return None, f"the shape of {model_name} is unknown to ftctl (set plan.tokenizer to its folder)"
    return ModelShape.from_config(known.config, known.parameters), known.source


# --- token statistics ------------------------------------------------------------------------------


def estimate_conversation(messages: list[dict[str, str]], max_seq_length: int, cpt: float) -> Conversation:
    """A conversation's tokens from its characters: each message's content at `cpt` characters a token,
    plus the template's markers; the assistant's content and its end-of-turn token are trained on."""
    tokens = assistant = kept = 0
    for message in messages:
        content = max(1, math.ceil(len(message["content"]) / cpt)) if message["content"] else 0
        start = tokens
        tokens += content + TEMPLATE_TOKENS
        if message["role"] == "assistant":
            trained = content + 1  # the reply and <|end|>
            assistant += trained
            first = start + 2  # the reply starts after <|assistant|> and its newline
            kept += max(0, min(trained, max_seq_length - first))
    return Conversation(tokens, assistant, kept)


def estimate_split(
    path: Path, max_seq_length: int, limit: int | None, cpt: float
) -> tuple[int, list[Conversation]]:
    total = count_lines(path)
    wanted = set(sample_indices(total, limit))
    found = [
        estimate_conversation(messages, max_seq_length, cpt)
        for index, (_, messages) in enumerate(read_conversations(path))
        if index in wanted
    ]
    return total, found


class _Counter:
    """Counts the splits' tokens with the tokenizer (cached per file, tokenizer and settings), or
    estimates them."""

    def __init__(self, ctx: Context, folder: Path | None, max_seq_length: int) -> None:
        self.ctx = ctx
        self.folder = folder
        self.seq = max_seq_length
        self._tokenizer: Any = None

    @property
    def exact(self) -> bool:
        return self.folder is not None

    def source(self) -> str:
        if self.folder is not None:
            return f"the model's tokenizer and chat template ({self.folder}), as ftctl's trainer tokenizes"
        cpt = self.ctx.cfg.plan.chars_per_token
        return (
            f"ESTIMATED: {cpt:g} characters per token + {TEMPLATE_TOKENS} template tokens per message, "
            "no tokenizer on this machine (plan.tokenizer counts exactly)"
        )

    def split(self, split: str, path: Path) -> SplitStats:
        limit = self.ctx.cfg.plan.sample_rows
        if self.folder is None:
            total, convs = estimate_split(path, self.seq, limit, self.ctx.cfg.plan.chars_per_token)
            return SplitStats.build(split, str(path), total, convs, self.seq)
        key = st.digest(
            {
                "v": STATS_VERSION,
                "file": st.file_signature(path),
                "tokenizer": st.file_signature(self.folder / "tokenizer.json")
                if (self.folder / "tokenizer.json").is_file()
                else str(self.folder),
                "seq": self.seq,
                "limit": limit,
            }
        )
        cache = self.ctx.workspace / "plan" / f"tokens-{split}-{key}.json"
        return cached_split(cache, lambda: (self._measure(split, path, limit), None))[0]

    def _measure(self, split: str, path: Path, limit: int | None) -> SplitStats:
        from ftctl.data.chat_tokens import end_of_turn_ids, load_chat_tokenizer, measure_conversations

        assert self.folder is not None
        if self._tokenizer is None:
            try:
                self._tokenizer = load_chat_tokenizer(self.folder)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - a damaged or incomplete tokenizer folder
                raise UsageError(
                    f"plan.tokenizer: cannot load a tokenizer from {self.folder} ({exc})".splitlines()[0][
                        :300
                    ]
                ) from None
        stop = frozenset(end_of_turn_ids(self._tokenizer))
        total, convs = measure_conversations(self._tokenizer, path, self.seq, limit, stop)
        return SplitStats.build(split, str(path), total, convs, self.seq)


# --- the plan --------------------------------------------------------------------------------------


def _require_data(state: State, command: str) -> None:
    rec = st.record(state, "prepare-data")
    if rec["status"] != st.SUCCEEDED:
        raise UsageError(
            f"{command} needs prepare-data, which is {rec['status']}",
            hint="run `ftctl run --to prepare-data` first",
        )


def _cluster(ctx: Context, recorded: StateView) -> tuple[str, int, GpuSize | None, str | None]:
    """(VM size, GPUs per node, the table's entry, a note) from check-compute's record, else the config."""
    compute = recorded.check_compute
    size = str(compute.size or ctx.cfg.compute.size)
    entry = gpu_size(size)
    gpus = compute.gpus_per_node or ctx.cfg.compute.num_gpus or (entry.gpus if entry else 1)
    note = None
    if not recorded.recorded("check-compute"):
        note = f"check-compute has not run: the cluster is compute.size {size} from the configuration"
    return size, int(gpus), entry, note


def _max_seq_length(value: Any, shape: ModelShape | None) -> tuple[int, str | None]:
    seq = int(value)
    if seq > 0:
        return seq, None
    context = shape.context_length if shape else None
    if context:
        return int(context), f"max_seq_length -1 (the component's default): the model's context, {context}"
    return 1 << 40, "max_seq_length -1 and the model's context length unknown: truncation not counted"


def build_plan(ctx: Context, state: State, command: str = "ftctl plan") -> Plan:
    """The plan of the pipeline job `ftctl submit` would start now."""
    from ftctl.backends.azureml.hooks import check_backend

    check_backend(ctx, state)
    _require_data(state, command)
    recorded = StateView(state)
    model_name = str(recorded.pick_model.name or ctx.cfg.model.name)
    params, notes = job_settings(ctx, recorded)
    folder = tokenizer_folder(ctx, model_name)
    shape, shape_source = model_shape(folder, model_name)
    seq, seq_note = _max_seq_length(params["max_seq_length"], shape)
    size, gpus, entry, cluster_note = _cluster(ctx, recorded)
    counter = _Counter(ctx, folder, seq)
    files = prepared_files(state)
    data = ctx.cfg.data
    splits = [
        counter.split(split, Path(files[split]["path"]))
        for split in (data.train_split, data.test_split)
        if split in files
    ]
    lora = _yes(params["apply_lora"])
    trainable = _trainable(shape, lora, int(params["lora_r"]))
    plan = Plan(
        backend="azureml",
        model={
            "name": model_name,
            "parameters": shape.parameters if shape else None,
            "context_length": shape.context_length if shape else None,
            "trainable": trainable,
            "shape_source": shape_source,
        },
        settings={
            "max_seq_length": seq,
            "packing": False,
            "precision": str(params["precision"]),
            "device": f"{size} ({gpus} x {entry.gpu if entry else 'GPU'} per node)",
            "lora": lora,
            "lora_r": params["lora_r"],
            "per_device_train_batch_size": params["per_device_train_batch_size"],
            "gradient_accumulation_steps": params["gradient_accumulation_steps"],
            "instance_type": size,
            "gpus_per_node": gpus,
            "num_nodes": int(params["num_nodes_finetune"]),
        },
        splits=splits,
        run=None,
        memory=None,
        time=None,
        tokens_source=counter.source(),
        notes=[n for n in (seq_note, cluster_note) if n] + notes,
        tokens_exact=counter.exact,
    )
    train = plan.split(data.train_split)
    if train is not None:
        plan.run = _run_size(params, gpus, train)
        plan.memory = _memory(shape, params, plan, entry, size)
        plan.time = measured_time(recorded, params, plan)
        plan.time_note = (
            f"not estimated on Azure ML ({plan.run.steps:,} optimizer steps, "
            f"{plan.run.tokens_per_epoch:,} tokens per epoch{'' if counter.exact else ', estimated'}); "
            "a completed job with these settings on this VM size gives a measured figure"
        )
    plan.findings = check(plan, data.train_split) + _service_rules(plan, data.train_split)
    return plan


# The settings a job's pace (seconds per optimizer step) depends on, besides the model and the VM size.
PACE_SETTINGS = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_seq_length",
    "apply_lora",
    "lora_r",
    "precision",
    "apply_deepspeed",
    "deepspeed_stage",
    "num_nodes_finetune",
)


def measured_time(recorded: StateView, params: dict[str, Any], plan: Plan) -> TimeEstimate | None:
    """The time from the last completed job's measured pace (submit records it), when that job trained
    the same model on the same VM size and GPUs with the same batch, sequence and precision settings;
    None otherwise. Nothing is asked of Azure ML here."""
    assert plan.run is not None
    last = recorded.submit
    pace = last.pace
    if not isinstance(pace, dict) or not pace.get("seconds_per_step"):
        return None
    before = {**COMPONENT_DEFAULTS, **(last.params or {})}
    same = (
        pace.get("model") == plan.model["name"]
        and str(pace.get("instance_type")).lower() == str(plan.settings["instance_type"]).lower()
        and pace.get("gpus_per_node") == plan.settings["gpus_per_node"]
        and all(str(before.get(key)) == str(params.get(key)) for key in PACE_SETTINGS)
    )
    if not same:
        return None
    source = (
        f"measured: job {last.job_name} ran {int(pace['steps']):,} steps in "
        f"{fmt_seconds(float(pace['train_runtime_s']))} on {pace.get('instance_type')}"
    )
    return TimeEstimate.build({"step_s": float(pace["seconds_per_step"])}, plan.run.steps, 0, 0, source)


def _trainable(shape: ModelShape | None, lora: bool, rank: int) -> int | None:
    if shape is None:
        return None
    if not lora:
        return shape.parameters
    return shape.lora_parameters(rank, list(PHI3_LINEAR)) if shape.model_type in ("phi3", None) else None


def _run_size(params: dict[str, Any], gpus: int, train: SplitStats) -> RunSize:
    """No packing on Azure ML: one row per conversation that trains. The component evaluates per its
    evaluation_strategy; those passes are not counted."""
    devices = gpus * int(params["num_nodes_finetune"])
    return RunSize.build(
        params, train.conversations - train.dropped, devices, train, packing=False, evals=False
    )


def _memory(
    shape: ModelShape | None, params: dict[str, Any], plan: Plan, entry: GpuSize | None, size: str
) -> MemoryEstimate | None:
    """ftctl.plan's estimate for one GPU of `size` (None without the model's shape)."""
    assert plan.run is not None
    train = plan.splits[0]
    if shape is None or plan.model["trainable"] is None:
        return None
    devices = plan.run.devices
    setup = MemorySetup(
        device="cuda",
        precision=str(params["precision"]),
        batch=plan.run.per_device_batch,
        seq=min(int(plan.settings["max_seq_length"]), max(1, train.max)),  # padded to the batch's longest
        lora=bool(plan.settings["lora"]),
        trainable=int(plan.model["trainable"]),
        devices=devices,
        zero_stage=int(params["deepspeed_stage"])
        if _yes(params["apply_deepspeed"]) and devices > 1
        else None,
    )
    if entry is None:
        return estimate_memory(shape, setup, None, f"{size} (its GPU memory is not in ftctl's table)")
    source = f"one {entry.gpu} of {size} ({entry.memory_gib} GiB; {entry.source})"
    return estimate_memory(shape, setup, entry.memory_gib * GiB, source)


def _service_rules(plan: Plan, train_split: str) -> list[Finding]:
    """What the service's own preprocess refuses, found before the job queues for a GPU."""
    train = plan.split(train_split)
    if train is None or plan.run is None or plan.run.train_rows >= MIN_TRAIN_ROWS:
        return []
    return [
        Finding(
            "error",
            f"{train_split} has {plan.run.train_rows} conversations to train on; the service's preprocess "
            f"needs at least {MIN_TRAIN_ROWS}",
            hint="raise data.split_pc, or use a larger training file",
        )
    ]


def preflight(ctx: Context, call: StageCall) -> Plan:
    """What `ftctl submit` checks before it submits a new job (ftctl.plan.submit_check)."""
    plan = build_plan(ctx, call.state, command="submit")
    submit_check(ctx.ui, plan)
    return plan
