"""Where the Hugging Face files live inside the model folders ftctl handles.

A model folder is either a plain Hugging Face folder (config.json + weights + tokenizer files) or an
MLflow pyfunc model folder written by the local trainer (MLmodel at the top, the merged Hugging Face
folder under artifacts/hf_model).
"""

from __future__ import annotations

from pathlib import Path

from ftctl.errors import UsageError

MLFLOW_HF_ARTIFACT = "hf_model"
RESOURCES = Path(__file__).resolve().parent.parent / "resources"


def shipped_model_dir() -> Path:
    """The built-in tiny Phi-3 chat model shipped with ftctl."""
    return RESOURCES / "tiny-phi3"


def resolve_hf_dir(path: Path) -> Path:
    """Return the folder holding config.json for a Hugging Face or ftctl MLflow model folder."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    artifacts = path / "artifacts"
    preferred = artifacts / MLFLOW_HF_ARTIFACT
    if (preferred / "config.json").is_file():
        return preferred
    if artifacts.is_dir():
        for candidate in sorted(artifacts.iterdir()):
            if (candidate / "config.json").is_file():
                return candidate
    raise UsageError(
        f"{path} is not a model folder: no config.json there or under artifacts/",
        hint="point at a Hugging Face model folder or an MLflow model folder written by `ftctl submit`",
    )
