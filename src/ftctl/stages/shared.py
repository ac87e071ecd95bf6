"""What both backends' stages share: allow/deny lists, lineage tags, display names, the finetune
parameters, finding the prepared files, the sample scoring request, and the prepare-data stage itself
(it runs on this machine on both backends, as the notebook's download-dataset.py does).

Backend-neutral: imports no backend and not the runner.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ftctl
from ftctl.config import TINY_MODEL, FinetuneSection
from ftctl.constants import SAMPLE_DATASET
from ftctl.errors import ConfigError, DataError, UsageError
from ftctl.models.smollm2 import NAME as SMOLLM2
from ftctl.records import StateView
from ftctl.scoring import build_request, expected_reply, parse_response, pick_conversation
from ftctl.state import atomic_write_text, digest, make_dirs

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import Outputs, StageCall, State


# --- the built-in model ------------------------------------------------------------------------------


DEMO_NOTE_SHOWN = "demo-model-note-shown"  # in the workspace: the note was shown there once


def demo_model_note(ctx: Context, model_name: str | None) -> str | None:
    """One line saying what the built-in model is, when it is the one picked, the first time a command
    would show it in this workspace (None otherwise: once read, it is noise on every command)."""
    if model_name != TINY_MODEL:
        return None
    marker = ctx.workspace / DEMO_NOTE_SHOWN
    if marker.exists():
        return None
    ctx.workspace.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, "")
    return (
        f"note: {TINY_MODEL} is a ~1M-parameter demo model: it learns the shape of answers, not facts. "
        f"For a real one, offline: `ftctl pick-model --model {SMOLLM2}` (SmolLM2-135M-Instruct; "
        "README: With a real model), or a local folder or hub id."
    )


# --- compute ----------------------------------------------------------------------------------------


def check_lists(size: str, allow_list: list[str] | None, deny_list: list[str], source: str) -> None:
    """The notebook's semantics: an allow-list wins; without one, the deny list applies."""
    if allow_list:
        if size.lower() not in {s.lower() for s in allow_list}:
            raise UsageError(
                f"compute {size!r} is not in the allow-list ({source}): {', '.join(allow_list)}",
                hint="use a device/size from the list, or set compute.allow_list",
            )
    elif size.lower() in {s.lower() for s in deny_list}:
        raise UsageError(
            f"compute {size!r} is in the deny list (compute.deny_list)",
            hint="choose another size, or edit compute.deny_list",
        )


# --- the prepared files -----------------------------------------------------------------------------


def prepared_files(state: State) -> dict[str, Any]:
    """split -> {path, rows, sha256, ...} as prepare-data recorded them."""
    files = state.get("stages", {}).get("prepare-data", {}).get("outputs", {}).get("files")
    return files if isinstance(files, dict) else {}


def split_inputs(state: State, *splits: str) -> dict[str, Path]:
    """label -> path of the prepared files of `splits` (those that exist), for a stage's fingerprint."""
    files = prepared_files(state)
    return {f"{split}.jsonl": Path(files[split]["path"]) for split in splits if split in files}


def data_file(ctx: Context, recorded: StateView, split: str, setting: str, required: bool) -> str | None:
    """The path of a prepared split; UsageError naming `setting` when a required one is missing."""
    files = prepared_files(recorded.state)
    if split in files:
        return str(files[split]["path"])
    if required:
        raise UsageError(
            f"the prepared data has no {split!r} split ({setting}); it has: {', '.join(files)}",
            hint=f"set {setting}, then run `ftctl prepare-data`",
        )
    return None


# --- submit -----------------------------------------------------------------------------------------


def _coerce(value: Any) -> Any:
    """Azure tags carry every value as a string; "true"/"false" are the component's booleans."""
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def finetune_params(ctx: Context, recorded: StateView) -> tuple[dict[str, Any], list[str]]:
    """The effective finetune parameters and notes on what the model's defaults changed or dropped."""
    cfg = ctx.cfg.finetune
    params = cfg.model_dump()
    notes: list[str] = []
    defaults = recorded.pick_model.model_specific_defaults
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


def training_inputs(ctx: Context, state: State) -> dict[str, Path]:
    """submit's input files: the train and test splits."""
    return split_inputs(state, ctx.cfg.data.train_split, ctx.cfg.data.test_split)


# --- register ---------------------------------------------------------------------------------------


def model_name(ctx: Context, recorded: StateView) -> str:
    base = recorded.pick_model.name or ctx.cfg.model.name
    return ctx.cfg.register_.model_name or f"{registry_name(base)}-ultrachat-200k"


def registry_name(model: str) -> str:
    """A registry name for `model`: a hub id with its / as - (microsoft-Phi-3-mini-4k-instruct); a local
    folder (a path) by its own name, not the path; anything but letters, digits, `.`, `_` and `-`
    becomes `-`, and the name starts with a letter or a digit (as Azure ML's and MLflow's names do, and
    so that no command line reads it as an option)."""
    if model.startswith(("/", "~", ".", "\\")) or re.match(r"^[A-Za-z]:[\\/]", model):
        path = Path(model).expanduser()
        model = (path.resolve() if path.name in ("", ".", "..") else path).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model.replace("/", "-")).strip("-._")
    return name or "model"


def lineage_tags(ctx: Context, recorded: StateView) -> dict[str, str]:
    job, model = recorded.submit, recorded.pick_model
    files = prepared_files(recorded.state)
    tags = {
        "ftctl.job_id": str(job.job_id),
        "ftctl.display_name": str(job.display_name),
        "ftctl.base_model": str(model.name),
        "ftctl.base_model_hash": str(model.content_hash),
        "ftctl.config_hash": digest(job.params),
        "ftctl.version": ftctl.__version__,
    }
    for split in (ctx.cfg.data.train_split, ctx.cfg.data.test_split):
        if split in files:
            tags[f"ftctl.data.{split}.sha256"] = str(files[split].get("sha256"))
    return tags


def register_summary(outputs: Outputs) -> str:
    """register's line in `ftctl status`: the version, and whether the gate was forced (so a model
    registered past a refusal stays visible)."""
    text = f"{outputs.get('model_name')} v{outputs.get('version')}"
    gate = outputs.get("gate")
    if isinstance(gate, dict) and gate.get("result") == "forced":
        text += " (forced past the gate)"
    return text


# --- score ------------------------------------------------------------------------------------------


def score_split(ctx: Context, state: State) -> str:
    """The split score samples: data.score_split, or data.test_split when the prepared data has no
    such split (a file prepare-data divided into train and test)."""
    data, files = ctx.cfg.data, prepared_files(state)
    return data.test_split if data.score_split not in files and data.test_split in files else data.score_split


def score_inputs(ctx: Context, state: State) -> dict[str, Path]:
    return split_inputs(state, score_split(ctx, state))


def score_summary(outputs: Outputs) -> str:
    return f"{outputs.get('output_chars')} chars in {outputs.get('latency_ms')} ms"


@dataclass
class Sample:
    """The notebook's sample_score.json, written to the workspace."""

    request_file: Path
    split: str
    line: int
    expected: str | None = None  # the dataset's own reply to the last user turn

    def report(self, raw: str, latency_ms: float, **extra: Any) -> dict[str, Any]:
        """Print the raw body and the parsed answer (any response shape); the stage's outputs."""
        text = parse_response(raw)
        return {
            **extra,
            "request_file": str(self.request_file),
            "split": self.split,
            "line": self.line,
            "latency_ms": latency_ms,
            "output": text[:500],
            "output_chars": len(text),
            "expected_output": None if self.expected is None else self.expected[:500],
        }


def write_sample(ctx: Context, recorded: StateView) -> Sample:
    """A seeded random conversation of data.score_split, up to its last user turn, with the scoring
    parameters, as the request file both backends send."""
    cfg = ctx.cfg.score
    split = score_split(ctx, recorded.state)
    files = prepared_files(recorded.state)
    if split not in files:
        raise UsageError(f"data.score_split: the prepared data has no {split!r} split ({', '.join(files)})")
    line, messages = pick_conversation(Path(files[split]["path"]), cfg.seed)
    expected = expected_reply(Path(files[split]["path"]), line)
    parameters = {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "do_sample": cfg.do_sample,
        "max_new_tokens": cfg.max_new_tokens,
    }
    request_file = make_dirs(ctx.workspace / "score", ctx.workspace) / "sample_score.json"
    text = json.dumps(build_request(messages, parameters), indent=2, ensure_ascii=False) + "\n"
    atomic_write_text(request_file, text)
    ctx.ui.info(f"  {split}.jsonl line {line}: {messages[-1]['content'][:100]!r}")
    return Sample(request_file, split, line, expected)


def show(ctx: Context, recorded: StateView, raw: str, sample: Sample | None = None) -> None:
    """Print the raw response, the answer parsed from it and, beside it, the dataset's own reply."""
    ctx.ui.result(f"raw response: {raw}")
    ctx.ui.result(f"output: {parse_response(raw)}")
    if sample is not None and sample.expected is not None:
        ctx.ui.result(f"expected (the dataset's reply): {sample.expected[:500]}")
    note = demo_model_note(ctx, recorded.pick_model.name)
    if note:
        ctx.ui.info(note)


# --- prepare-data (the same on both backends) -------------------------------------------------------


def prepare_inputs(ctx: Context, state: State) -> dict[str, Path]:
    from ftctl.data.sources import sample_dataset_dir

    dataset = ctx.cfg.data.dataset
    if dataset == SAMPLE_DATASET:
        return {"dataset": sample_dataset_dir()}
    path = Path(dataset).expanduser()
    return {"dataset": path} if path.exists() else {}


def prepare_run(ctx: Context, call: StageCall) -> Outputs:
    """The notebook's download-dataset.py step, validating every record: one <split>.jsonl per split
    under data.download_dir (inside the workspace unless absolute), with row counts, dropped records
    and sha256 per file. Any format ftctl reads is written in the ultrachat shape; one file is divided
    into the train and test splits (data.test_pc, data.seed); duplicates and overlap are reported."""
    from ftctl.data.formats import NAMES
    from ftctl.data.prepare import PrepareOptions, format_checks, format_dropped, prepare
    from ftctl.data.sources import SOURCE_HUB, source_kind

    cfg = ctx.cfg.data
    out_dir = make_dirs(ctx.data_dir(), ctx.workspace)
    ctx.ui.info(f"  {cfg.dataset} -> {out_dir} ({cfg.split_pc:g}% of each split)")
    # Drawn as rows are counted, with no drawing thread (a helper is forked only from a process with no
    # other thread); a hub download counts no row for minutes, so its bar keeps Rich's thread.
    try:
        ticked = source_kind(cfg.dataset) != SOURCE_HUB
    except DataError:  # prepare() says what is wrong, after what it checks first
        ticked = True
    with ctx.ui.progress("reading and validating", unit="rows", ticked=ticked) as bar:

        def progress(line: str) -> None:  # "<split>: N rows, M dropped" once a split is done
            bar.log(f"  {line}")

        def rows(read: int) -> None:  # rows read so far, ~10 times a second (the bar's only drawing)
            bar.update(read, quiet=True)

        report = prepare(
            cfg.dataset,
            out_dir,
            PrepareOptions(
                subset=cfg.subset,
                split_pc=cfg.split_pc,
                train_split=cfg.train_split,
                min_train_rows=cfg.min_train_rows,
                revision=cfg.revision,
                format=cfg.format,
                columns=cfg.columns,
                test_split=cfg.test_split,
                test_pc=cfg.test_pc,
                seed=cfg.seed,
                dedupe=cfg.dedupe,
                weights=ctx.backend.has("loss_weights"),
            ),
            progress=progress,
            rows=rows,
        )
    formats = {split.format for split in report.splits if split.format}
    if report.checked or formats != {"openai"}:  # the user's own data (ultrachat's output stays as it was)
        first = report.splits[0]
        how = f"detected at {first.where}:{first.detected_at}" if first.detected_at else "data.format"
        ctx.ui.info(f"  format: {', '.join(NAMES[f] for f in sorted(formats))}, {how}")
    for line in format_dropped(report):
        ctx.ui.warn(f"dropped {line}")
    for line in format_checks(report, cfg.dedupe):
        ctx.ui.warn(line)
    names = [split.name for split in report.splits]
    if cfg.test_split not in names:
        ctx.ui.warn(f"no {cfg.test_split!r} split in {cfg.dataset} (it has {', '.join(names)})")
    if cfg.score_split not in names and cfg.score_split != cfg.test_split:
        if report.divided is None:
            ctx.ui.warn(f"no {cfg.score_split!r} split in {cfg.dataset} (it has {', '.join(names)})")
        if cfg.test_split in names:
            ctx.ui.info(f"  score samples {cfg.test_split} (there is no {cfg.score_split!r} split)")
    return {
        "dataset": cfg.dataset,
        "source_kind": report.source_kind,
        "download_dir": str(out_dir),
        **(
            {"divided": {"split": report.divided, "test_pc": report.test_pc, "seed": report.seed}}
            if report.divided is not None
            else {}
        ),
        "files": {
            split.name: {
                "path": str(split.path),
                "rows": split.rows_written,
                "rows_read": split.rows_read,
                "dropped": len(split.dropped),
                "sha256": split.sha256,
                "bytes": split.bytes,
                "format": split.format,
                **(
                    {"duplicates": len(split.duplicates), "overlap": len(split.overlap)}
                    if report.checked
                    else {}
                ),
            }
            for split in report.splits
        },
    }


def prepare_output_files(ctx: Context, outputs: Outputs) -> dict[str, Path]:
    files = outputs.get("files") or {}
    return {f"{split}.jsonl": Path(info["path"]) for split, info in files.items()}


def prepare_summary(outputs: Outputs) -> str:
    files = outputs.get("files") or {}
    return ", ".join(f"{name} {info.get('rows')}" for name, info in files.items())
