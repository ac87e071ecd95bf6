"""A model given as a path, and registry names that look like options.

Found while trying a converted model folder (issue 19): `model.name=/tmp/.../smollm2` registered the
fine-tuned model as `-tmp-...-ultrachat-200k`, and deploy started the endpoint server with
`--model-name -tmp-...:1`, which its argument parser read as an unknown option: deploy failed. Names
derived from a path are now the folder's own name in a safe character set, and every argument reaches the
server as `--option=value`. Both tests failed on the code before the fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from ftctl.records import StateView
from ftctl.stages.shared import model_name
from harness import Ftctl

VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # Azure ML's (and a command line's) idea of a name


def _derived(model: str) -> str:
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(register_=SimpleNamespace(model_name=None), model=SimpleNamespace(name=model))
    )
    state = {"stages": {"pick-model": {"status": "succeeded", "outputs": {"name": model}}}}
    return model_name(ctx, StateView(state))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("/tmp/pytest-of-root/models/ultrachat-smollm2", "ultrachat-smollm2-ultrachat-200k"),
        ("/srv/models/Phi-3 mini (copy)/", "Phi-3-mini-copy-ultrachat-200k"),
        ("~/models/-odd-", "odd-ultrachat-200k"),
        ("./my model", "my-model-ultrachat-200k"),
        ("/", "model-ultrachat-200k"),
        ("microsoft/Phi-3-mini-4k-instruct", "microsoft-Phi-3-mini-4k-instruct-ultrachat-200k"),
        ("ftctl/tiny-phi3-chat", "ftctl-tiny-phi3-chat-ultrachat-200k"),
    ],
)
def test_registry_names_derived_from_a_model_are_valid_names(model: str, expected: str) -> None:
    name = _derived(model)
    assert name == expected
    assert VALID.match(name)


def test_a_registered_name_that_starts_with_a_dash_deploys_and_scores(
    trained_ws: Ftctl, tmp_path: Path
) -> None:
    """The name the bug produced, given as register.model_name: the server still reads it as a value."""
    ws = trained_ws.copy(tmp_path / "ws")
    ws.settings.append("register.model_name=-tmp-models-tiny-ultrachat-200k")
    ws.settings.append("score.max_new_tokens=4")
    ws("register")
    assert ws.outputs("register")["model_name"] == "-tmp-models-tiny-ultrachat-200k"
    try:
        ws("deploy")
        process = ws.outputs("deploy")["process"]
        assert "--model-name=-tmp-models-tiny-ultrachat-200k:1" in process["cmdline"]
        scored = ws("score")
        assert "output: " in scored.stdout
    finally:
        ws("teardown", code=None)
