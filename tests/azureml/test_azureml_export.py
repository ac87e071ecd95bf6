"""`ftctl --backend azureml export` (issue 20): the registered model version is downloaded through
azure-ai-ml's own ModelOperations.download (the version's datastore path, the datastore's account key,
then List Blobs and ranged Get Blob on the workspace's blob store, all served by the fake) and exported
and checked on this machine as a local job is. The version's files are the tiny model's MLflow folder, as
the session's trained_ws registered it (placed where the pipeline job's output lies)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml", reason="the azure extra is not installed")

from ftctl import export as ex  # noqa: E402
from harness import Ftctl  # noqa: E402


def _registered(az, trained_ws: Ftctl) -> tuple[str, str, Path]:
    """run --to register on the fake, then the job's output folder holds the tiny fine-tuned model;
    (name, version, an empty folder for exports)."""
    az("run", "--to", "register")
    registered = az.outputs("register")
    name, version = registered["model_name"], registered["version"]
    uri = az.service.models[name][version]["properties"]["modelUri"]
    assert "/datastores/workspaceblobstore/paths/" in uri  # the service answers the output's datastore path
    az.service.put_folder(uri.split("/paths/", 1)[1], Path(trained_ws.outputs("register")["model_dir"]))
    exports = az.root / "exports"
    exports.mkdir()
    return name, version, exports


def test_the_registered_version_is_downloaded_exported_and_checked(az, trained_ws: Ftctl) -> None:
    name, version, exports = _registered(az, trained_ws)
    out = exports / "out"
    result = az("export", str(out), "--format", "merged")
    report = json.loads((out / ex.REPORT).read_text())
    figures = report["check"]
    assert figures["ok"] and figures["problems"] == [], figures
    assert figures["logits_max_abs_diff"] <= figures["tolerance"] == 1e-4
    assert figures["template_token_ids_equal"] == "16/16"
    assert figures["greedy_replies_end_turn"] == figures["fine_tuned_replies_end_turn"]
    assert report["registered"] == f"{name} v{version}"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert f"exported {name} v{version} as merged to {out}" in result.stdout
    # Through the SDK's download: the version, the datastore's key, a listing, the blobs by range.
    blob_gets = [
        r for r in az.service.requests if r.method == "GET" and r.host.endswith(".blob.core.windows.net")
    ]
    assert any(r.query.get("comp") == "list" for r in blob_gets)
    assert any(r.status == 206 and r.path.endswith("/model.safetensors") for r in blob_gets)
    assert az.service.find("POST", r"/datastores/workspaceblobstore/listSecrets$")
    assert [p.name for p in exports.iterdir()] == ["out"]  # the download and the temporary folder are gone


def test_a_missing_version_or_format_without_a_source_is_exit_2(az, trained_ws: Ftctl) -> None:
    name, version, exports = _registered(az, trained_ws)
    result = az("export", str(exports / "lora"), "--format", "adapter", code=2)
    assert "has no LoRA adapter to export (Azure ML registers the merged model" in result.stderr
    del az.service.models[name][version]
    result = az("export", str(exports / "out"), code=2)
    assert f"model {name} version {version} is not in workspace ws-ftctl-test" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(exports.iterdir()) == []  # nothing half-written, no download left


def test_an_mlflow_transformers_folder_joins_model_and_tokenizer(tmp_path: Path) -> None:
    """The layout Azure ML's own pipeline registers (mlflow.transformers: the model under data/model, the
    tokenizer apart under data/tokenizer) is found and joined into one Hugging Face folder."""
    import shutil

    from ftctl.backends.azureml.export import hf_folder
    from ftctl.models.layout import shipped_model_dir

    version = tmp_path / "Phi-4-ultrachat-200k" / "trained_model"
    (version / "data" / "model").mkdir(parents=True)
    (version / "data" / "tokenizer").mkdir()
    (version / "MLmodel").write_text("flavors:\n  transformers: {}\n")
    for path in shipped_model_dir().iterdir():
        tokenizer_file = path.name.startswith("tokenizer")
        shutil.copy2(path, version / "data" / ("tokenizer" if tokenizer_file else "model") / path.name)
    joined = hf_folder(tmp_path)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in joined.iterdir()
    }
    (version / "data" / "tokenizer" / "tokenizer.json").unlink()
    (version / "data" / "tokenizer" / "tokenizer_config.json").unlink()
    shutil.rmtree(joined)
    with pytest.raises(Exception, match="no tokenizer beside"):
        hf_folder(tmp_path)
