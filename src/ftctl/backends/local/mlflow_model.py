"""The MLflow pyfunc wrapper around a merged Hugging Face chat model.

`save_mlflow_model(hf_dir, out_dir)` writes an MLflow model folder: MLmodel at the top and the Hugging
Face folder copied to out_dir/artifacts/hf_model (the layout `ftctl.models.layout.resolve_hf_dir`
reads). `mlflow models serve -m out_dir --env-manager local` serves it; `ChatModel.predict` takes
chat conversations and returns the assistant's reply for each.

Accepted inputs (a conversation is a list of {"role", "content"} dicts; the model signature declares
one "messages" column):
  - a DataFrame with a "messages" column, one conversation per row;
  - a list of {"messages": conversation} records, or one {"messages": conversation}.
Through `mlflow models serve` that is {"dataframe_records": [{"messages": [...]}, ...]},
{"dataframe_split": {"columns": ["messages"], "data": [[[...]]]}}, {"inputs": [{"messages": [...]}]}
or {"inputs": {"messages": [...]}}; the reply is {"predictions": ["...", ...]}, one per conversation.
ChatModel.predict itself (no signature check) also takes a bare conversation or a prompt string.
Generation parameters (params): max_new_tokens, temperature, top_p, do_sample.

Importing this module imports mlflow (ChatModel subclasses mlflow.pyfunc.PythonModel): import it lazily.
torch and transformers are imported inside functions only.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from ftctl.models.layout import MLFLOW_HF_ARTIFACT

_PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
DEFAULT_GENERATION = {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0, "do_sample": False}


def _pyfunc_base() -> type:
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


def _to_conversations(model_input: Any) -> list[list[dict[str, str]]]:
    """Normalise every accepted input shape to a list of conversations."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas comes with mlflow
        pd = None
    if pd is not None and isinstance(model_input, pd.DataFrame):
        return _from_dataframe(model_input)
    if isinstance(model_input, str):
        return [[{"role": "user", "content": model_input}]]
    if isinstance(model_input, dict):
        return _from_dict(model_input)
    if isinstance(model_input, (list, tuple)):
        items = list(model_input)
        if items and all(isinstance(m, dict) and "role" in m for m in items):
            return [_one_conversation(items)]
        return [_one_conversation(m["messages"] if isinstance(m, dict) else m) for m in items]
    raise ValueError(f"unsupported input type {type(model_input).__name__}")


def _from_dataframe(frame: Any) -> list[list[dict[str, str]]]:
    """One conversation per row of a "messages" column (or of the only column); a frame of role and
    content columns is one conversation."""
    if "messages" in frame.columns:
        rows = list(frame["messages"])
    elif {"role", "content"} <= set(frame.columns):
        rows = [frame[["role", "content"]].to_dict("records")]
    elif len(frame.columns) == 1:
        rows = list(frame.iloc[:, 0])
    else:
        raise ValueError("expected a 'messages' column (one conversation per row)")
    return [_one_conversation(r) for r in rows]


def _from_dict(record: dict) -> list[list[dict[str, str]]]:
    if "messages" in record:
        msgs = record["messages"]
        # {"messages": [[...], [...]]} (column-oriented) or {"messages": [...]} (one conversation)
        if msgs and isinstance(msgs, list) and all(_is_conversation(m) for m in msgs):
            return [_one_conversation(m) for m in msgs]
        return [_one_conversation(msgs)]
    if "role" in record and "content" in record:
        return [[_message(record)]]
    raise ValueError("expected {'messages': [...]}")


def _is_conversation(value: Any) -> bool:
    return (
        hasattr(value, "__len__")
        and not isinstance(value, (str, dict))
        and (len(value) == 0 or all(isinstance(m, dict) for m in value))
    )


def _message(m: Any) -> dict[str, str]:
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise ValueError(f"a message must be an object with 'role' and 'content', got {m!r}")
    return {"role": str(m["role"]), "content": str(m["content"])}


def _one_conversation(conv: Any) -> list[dict[str, str]]:
    if isinstance(conv, str):
        return [{"role": "user", "content": conv}]
    if hasattr(conv, "tolist"):  # numpy arrays from the scoring server
        conv = conv.tolist()
    if not isinstance(conv, (list, tuple)) or not conv:
        raise ValueError("a conversation must be a non-empty list of messages")
    return [_message(m) for m in conv]


def generate_replies(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    params: dict[str, Any] | None = None,
) -> list[str]:
    """Generate one assistant reply per conversation (greedy unless do_sample/temperature say so)."""
    import torch

    cfg = dict(DEFAULT_GENERATION)
    cfg.update({k: v for k, v in (params or {}).items() if k in DEFAULT_GENERATION and v is not None})
    temperature = float(cfg["temperature"])
    do_sample = bool(cfg["do_sample"]) or temperature > 0
    gen_kwargs: dict[str, Any] = {"max_new_tokens": int(cfg["max_new_tokens"]), "do_sample": do_sample}
    if do_sample:
        gen_kwargs["temperature"] = temperature if temperature > 0 else 1.0
        gen_kwargs["top_p"] = float(cfg["top_p"])
    if tokenizer.pad_token_id is not None:
        gen_kwargs["pad_token_id"] = tokenizer.pad_token_id
    device = next(model.parameters()).device
    replies = []
    for conv in conversations:
        prompt = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(**enc, **gen_kwargs)
        new_tokens = out[0, enc["input_ids"].shape[1] :]
        replies.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    return replies


class ChatModel(_pyfunc_base()):  # type: ignore[misc]
    """pyfunc model: loads artifacts["hf_model"] and answers chat conversations."""

    # predict has no type hints (the signature describes the input): MLflow's type-hint wrapper
    # would only warn about that, so skip it.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf_dir = context.artifacts[MLFLOW_HF_ARTIFACT]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        model: Any = AutoModelForCausalLM.from_pretrained(hf_dir)
        self.model = model.to(device).eval()

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return generate_replies(self.model, self.tokenizer, _to_conversations(model_input), params)


def _signature() -> Any:
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    message = Object([Property("role", "string"), Property("content", "string")])
    return ModelSignature(
        inputs=Schema([ColSpec(Array(message), "messages")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", DEFAULT_GENERATION["max_new_tokens"]),
                ParamSpec("temperature", "double", DEFAULT_GENERATION["temperature"]),
                ParamSpec("top_p", "double", DEFAULT_GENERATION["top_p"]),
                ParamSpec("do_sample", "boolean", DEFAULT_GENERATION["do_sample"]),
            ]
        ),
    )


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "accelerate", "pandas"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def save_mlflow_model(hf_dir: Path, out_dir: Path) -> Path:
    """Write an MLflow pyfunc model folder at out_dir wrapping the Hugging Face folder hf_dir.

    The Hugging Face files land at out_dir/artifacts/hf_model. out_dir must not exist yet.
    Returns out_dir.
    """
    import shutil
    import tempfile

    import mlflow.pyfunc

    hf_dir = Path(hf_dir)
    out_dir = Path(out_dir)
    # MLflow copies an artifact folder under its own base name; stage it as "hf_model" when needed.
    with tempfile.TemporaryDirectory(prefix="ftctl-mlflow-") as tmp:
        src = hf_dir
        if hf_dir.name != MLFLOW_HF_ARTIFACT:
            src = Path(tmp) / MLFLOW_HF_ARTIFACT
            shutil.copytree(hf_dir, src)
        # Quiet MLflow's advice (cloudpickle, input_example): ChatModel is pickled by reference to
        # this module, and the signature documents the input.
        mlflow_logger = logging.getLogger("mlflow.pyfunc")
        level = mlflow_logger.level
        mlflow_logger.setLevel(logging.ERROR)
        progress_bar = os.environ.get(_PROGRESS_BAR_ENV)
        os.environ[_PROGRESS_BAR_ENV] = "false"  # MLflow copies the artifacts with a progress bar
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                mlflow.pyfunc.save_model(
                    path=str(out_dir),
                    python_model=ChatModel(),
                    # As a file:// URI: MLflow reads a plain path as a URI too, and would decode a
                    # `%20` in the workspace's path into a space (a folder that does not exist).
                    artifacts={MLFLOW_HF_ARTIFACT: src.resolve().as_uri()},
                    signature=_signature(),
                    pip_requirements=_pip_requirements(),
                )
        finally:
            mlflow_logger.setLevel(level)
            if progress_bar is None:
                os.environ.pop(_PROGRESS_BAR_ENV, None)
            else:
                os.environ[_PROGRESS_BAR_ENV] = progress_bar
    return out_dir
