"""`ftctl export` on Azure ML: the registered model version is downloaded first
(`ml_client.models.download`: the version's asset path on its datastore, blob by blob) into a temporary
folder beside OUT, then exported and checked on this machine exactly as a local job is (ftctl.export);
the download is removed afterwards.

The MLflow folder may be ftctl's layout (artifacts/hf_model) or the mlflow.transformers one that Azure
ML's chat_completion_pipeline writes (the model under data/model or model/, the tokenizer beside it under
data/tokenizer or components/tokenizer): `hf_folder` finds the model and, where the tokenizer lies apart,
joins the two in one folder. The pipeline registers the merged model (merge_lora_weights), so there is no
adapter to export."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftctl.errors import UsageError
from ftctl.records import StateView

if TYPE_CHECKING:
    from ftctl.context import Context
    from ftctl.stages.contract import State

NO_ADAPTER = "Azure ML registers the merged model (merge_lora_weights), not the LoRA adapter"
# Where the tokenizer lies beside the model in an mlflow.transformers folder (older, newer mlflow).
TOKENIZER_DIRS = ("data/tokenizer", "components/tokenizer", "tokenizer")


def hf_folder(downloaded: Path) -> Path:
    """The Hugging Face folder (config.json, weights and tokenizer) inside a downloaded model version."""
    from ftctl.data.chat_tokens import TOKENIZER_FILES
    from ftctl.models.layout import resolve_hf_dir

    configs = sorted(downloaded.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    if not configs:
        return resolve_hf_dir(downloaded)  # its UsageError names what is missing
    for config in configs:
        if (config.parent / "MLmodel").is_file():
            continue  # an MLflow folder's config.json is not a model's
        model = config.parent
        if any((model / name).is_file() for name in TOKENIZER_FILES):
            return model
        root = next((p for p in model.parents if (p / "MLmodel").is_file()), model.parent)
        tokenizer = next(
            (root / d for d in TOKENIZER_DIRS if any((root / d / n).is_file() for n in TOKENIZER_FILES)), None
        )
        if tokenizer is None:
            raise UsageError(f"the downloaded model has no tokenizer beside {model.relative_to(downloaded)}")
        joined = downloaded / ".hf_model"
        shutil.copytree(model, joined)
        for path in tokenizer.iterdir():
            if path.is_file() and not (joined / path.name).exists():
                shutil.copy2(path, joined / path.name)
        return joined
    return resolve_hf_dir(downloaded)


def export(ctx: Context, state: State, fmt: str, out: Path, job: str | None) -> dict[str, Any]:
    from azure.core.exceptions import ResourceNotFoundError

    from ftctl.backends.azureml.backend import azure
    from ftctl.backends.azureml.client import calling
    from ftctl.export import Source, check_format, check_out
    from ftctl.export import export as write_and_check
    from ftctl.stages.shared import prepared_files

    check_format(fmt)
    if job is not None:
        raise UsageError(
            "--job exports a local job; on Azure ML, export takes the registered model version",
            hint="ftctl --backend azureml register, then ftctl --backend azureml export OUT",
        )
    recorded = StateView(state)
    name, version = recorded.register.model_name, recorded.register.version
    if not name or not version:
        raise UsageError("nothing is registered to export", hint="run `ftctl --backend azureml register`")
    out = check_out(out)
    handles = azure(ctx)
    where = f"workspace {handles.workspace_ref.workspace_name}"
    download = Path(tempfile.mkdtemp(prefix=f".{out.name}.download-", dir=out.parent))
    try:
        what = f"downloading model {name} version {version}"
        with ctx.ui.spinner(f"{what} from {where}"), calling(what):
            try:
                handles.workspace.models.download(name=name, version=version, download_path=download)
            except ResourceNotFoundError:
                raise UsageError(
                    f"model {name} version {version} is not in {where}",
                    hint="`ftctl --backend azureml status` names the registered version; register again",
                ) from None
        files = prepared_files(state)
        split = ctx.cfg.data.test_split
        src = Source(
            job_id=str(recorded.submit.job_name or f"{name}:{version}"),
            job_dir=download,
            hf_dir=hf_folder(download),
            adapter_dir=None,
            base_dir=None,
            registered=f"{name} v{version}",
            held_out=Path(files[split]["path"]) if split in files else None,
            no_adapter=NO_ADAPTER,
        )
        return write_and_check(ctx, src, fmt, out)
    finally:
        shutil.rmtree(download, ignore_errors=True)
