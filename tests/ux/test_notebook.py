"""The notebook in notebooks/ executes top to bottom (nbclient, a real Python kernel) on the local
backend, on a copy of the session's trained workspace (so its training cells are up to date)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "ftctl_phi3_ultrachat.ipynb"


def _text(cell) -> str:  # type: ignore[no-untyped-def]
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def test_notebook_runs_top_to_bottom(scratch, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for name, value in scratch.env().items():
        monkeypatch.setenv(name, value)  # the kernel, and the ftctl it runs, inherit them
    # The notebook's kernel ("python3") is this interpreter, whatever kernels are installed elsewhere.
    kernel = tmp_path / "jupyter" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernel / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "ftctl", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the cell if any cell fails

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code), "a cell did not run"
    by_source = {cell.source.splitlines()[0]: cell for cell in code}
    assert "submit: up to date" in _text(by_source['ftctl("submit")'])
    metrics = by_source['metrics = ftctl_json("metrics", "--plot", str(WORKSPACE / "loss.png"))']
    assert any("image/png" in out.get("data", {}) for out in metrics.outputs), "no loss-curve figure shown"
    assert (scratch.workspace / "loss.png").exists()
    assert "eval_loss" in _text(metrics)
    chat = _text(
        by_source['for turn in chat("What is the capital of France?", "And of Italy?", "What is 2 plus 3?"):']
    )
    assert chat.count("assistant> ") == 3 and chat.count(" ms)") == 3
    openai = _text(by_source['creds = ftctl_json("credentials")'])
    assert "OpenAI base URL: http://127.0.0.1:" in openai and "CompletionUsage(" in openai
    assert " stopped; port " in _text(by_source['ftctl("teardown")'])
    final = _text(by_source['ftctl("status")'])
    assert "('teardown', 'succeeded', None)" in final
    # The endpoint is gone: the commands that need it say so and name the way back.
    for args in (["credentials"], ["chat"], ["score", "--file", "-"]):
        gone = scratch(*args, input="[]\n", code=1)  # a down endpoint: a runtime failure
        assert "is not running (it was torn down" in gone.stderr and "run `ftctl deploy`" in gone.stderr
