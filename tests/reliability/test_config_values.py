"""Values that parse but must not be accepted: infinities, NaN, integers beyond any sane size, odd
booleans, and unknown keys (which get a "did you mean").

Every float and int setting is found by walking the config model, so a setting added later is covered
without touching this file. The checks run in-process (load_config takes about a millisecond); the last
few run `python -m ftctl` as a user would and look at the whole output.
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from ftctl.config import Config, FinetuneSection, load_config
from ftctl.errors import ConfigError

from .conftest import base_env


def settings(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(key path, annotation, FieldInfo) of every leaf setting, by its YAML name."""
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from settings(annotation, key + ".")
        else:
            yield key, annotation, info


def kinds(annotation: Any) -> set[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return {arg for arg in get_args(annotation) if arg is not type(None)}
    return {annotation}


FLOATS = [key for key, ann, _ in settings() if kinds(ann) == {float}]
INTS = [key for key, ann, _ in settings() if kinds(ann) == {int}]
BOOLS = [key for key, ann, _ in settings() if kinds(ann) == {bool}]


def env_name(key: str) -> str:
    return "FTCTL_" + key.upper().replace(".", "__")


def refused(
    overrides: list[str] | None = None, environ: dict[str, str] | None = None, path: Path | None = None
) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [], environ=environ or {})
    assert info.value.exit_code == 2
    return str(info.value)


def test_the_model_has_the_settings_this_file_expects() -> None:
    assert {"finetune.learning_rate", "score.top_p", "lock_timeout_s"} <= set(FLOATS)
    assert {"finetune.num_train_epochs", "finetune.max_seq_length", "deploy.port"} <= set(INTS)
    assert {"finetune.apply_lora", "score.do_sample"} <= set(BOOLS)


# --- floats: finite, always ------------------------------------------------------------------------

NOT_FINITE = ["inf", "-inf", "nan", ".inf", "-.inf", ".nan", "Infinity", "NaN", "1e999", "-1.0e999"]


@pytest.mark.parametrize("key", FLOATS)
def test_every_float_setting_refuses_inf_and_nan_from_set_and_env(key: str) -> None:
    for text in NOT_FINITE:
        message = refused([f"{key}={text}"])
        assert f"{key} (from --set):" in message, (text, message)
        if "." in key:  # top-level settings have no environment variable (FTCTL_<SECTION>__<KEY>)
            message = refused(environ={env_name(key): text})
            assert f"{key} (from {env_name(key)}):" in message, (text, message)


@pytest.mark.parametrize("text", [".inf", "-.inf", ".nan", ".NaN", "+.INF", "1.0e999", "'inf'", '"nan"'])
def test_inf_and_nan_in_a_file_name_file_line_and_key(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"finetune:\n  seed: 1\n  learning_rate: {text}\n")
    message = refused(path=path)
    assert f"{path}:3: finetune.learning_rate: Input should be" in message, message
    assert "finite" in message or "greater than 0" in message, message


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, 10**400, -1e-3, 0.0])
def test_a_learning_rate_that_cannot_train_never_reaches_training(value: float) -> None:
    with pytest.raises(ConfigError, match="finetune.learning_rate"):
        load_config(None, environ={}, overrides=[f"finetune.learning_rate={value}"])
    cfg = load_config(None, environ={}).values
    with pytest.raises(ValidationError):  # nor by assignment after loading
        cfg.finetune.learning_rate = value
    with pytest.raises(ValidationError):  # nor through the model the submit stage validates with
        FinetuneSection.model_validate({"learning_rate": value})


# --- ints: every one has a deliberate upper bound --------------------------------------------------


def test_every_int_setting_documents_its_bounds() -> None:
    for key, _, info in settings():
        if key not in INTS:
            continue
        upper = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
        lower = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
        assert upper is not None and lower is not None, f"{key} has no ge/le bounds"
        assert f"{lower}..{upper}" in (info.description or ""), (
            f"{key}: the description does not state its range {lower}..{upper}: {info.description!r}"
        )


@pytest.mark.parametrize("key", INTS)
def test_every_int_setting_refuses_huge_values(key: str) -> None:
    for text in [
        "1000000000000000000000000000000",
        "99999999999999999999",
        "-99999999999999999999",
        "1.0e30",
    ]:
        message = refused([f"{key}={text}"])
        assert f"{key} (from --set): Input should be" in message, (text, message)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("finetune:\n  num_train_epochs: 1000000000000000000000000000000\n", "finetune.num_train_epochs"),
        ("finetune:\n  max_seq_length: 99999999999999999999\n", "finetune.max_seq_length"),
        ("finetune:\n  max_steps: 1.0e+30\n", "finetune.max_steps"),
        ("finetune:\n  seed: 4294967296\n", "finetune.seed"),
        ("finetune:\n  per_device_train_batch_size: 100000\n", "finetune.per_device_train_batch_size"),
        ("deploy:\n  request_timeout_ms: 99999999999\n", "deploy.request_timeout_ms"),
        ("compute:\n  num_gpus: 100000\n", "compute.num_gpus"),
        ("score:\n  max_new_tokens: 10000000000\n", "score.max_new_tokens"),
    ],
)
def test_huge_ints_in_a_file_name_file_line_and_key(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(line)
    message = refused(path=path)
    assert f"{path}:2: {key}: Input should be less than or equal to" in message, message


@pytest.mark.parametrize(
    ("key", "text"),
    [("deploy.port", "65536"), ("deploy.port", "-1"), ("deploy.port", "1e9"), ("finetune.seed", "-1")],
)
def test_int_range_edges(key: str, text: str) -> None:
    assert f"{key} (from --set): Input should be" in refused([f"{key}={text}"])


@pytest.mark.parametrize(
    "setting", ["deploy.port=65535", "finetune.seed=4294967295", "finetune.num_train_epochs=1000"]
)
def test_the_bounds_themselves_are_allowed(setting: str) -> None:
    load_config(None, [setting], environ={})


@pytest.mark.parametrize("key", ["finetune.num_train_epochs", "finetune.learning_rate", "score.top_p"])
@pytest.mark.parametrize("text", ["true", "yes", "on", "false"])
def test_numbers_refuse_booleans(key: str, text: str) -> None:
    assert f"{key} (from --set): Input should be a number" in refused([f"{key}={text}"])


# --- bools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", BOOLS)
def test_every_bool_setting_refuses_odd_values(key: str) -> None:
    for text in ["maybe", "2", "-1", "0.5", "1.0", "null", "[]", "{}", "''", "nan", "yess"]:
        message = refused([f"{key}={text}"])
        assert f"{key} (from --set): Input should be" in message, (text, message)


@pytest.mark.parametrize("text", ["true", "false", "True", "FALSE", "yes", "no", "on", "off", "1", "0"])
def test_bool_settings_take_the_usual_spellings(text: str) -> None:
    want = text.lower() in ("true", "yes", "on", "1")
    cfg = load_config(None, environ={"FTCTL_FINETUNE__APPLY_LORA": text}).values
    assert cfg.finetune.apply_lora is want


# --- unknown keys: did you mean ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "finetune:\n  learnig_rate: 0.1\n",
            "c.yaml:2: finetune.learnig_rate: unknown key (did you mean finetune.learning_rate?)",
        ),
        ("finetune:\n  num_train_epoch: 1\n", "(did you mean finetune.num_train_epochs?)"),
        ("modle:\n  name: x\n", "c.yaml:1: modle: unknown key (did you mean model?)"),
        ("scor:\n  top_pp: 0.5\n", "c.yaml:1: scor: unknown key (did you mean score?)"),
        (
            "learning_rate: 0.1\n",
            "c.yaml:1: learning_rate: unknown key (did you mean finetune.learning_rate?)",
        ),
        ("data:\n  learning_rate: 0.1\n", "(did you mean finetune.learning_rate?)"),
        ("seed: 1\n", "(did you mean data.seed, finetune.seed or score.seed?)"),  # data.seed: issue 19
        ("Finetune:\n  seed: 1\n", "(did you mean finetune?)"),
        ("lock_timeout: 3\n", "(did you mean lock_timeout_s?)"),
    ],
)
def test_unknown_key_in_a_file_suggests_the_closest(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert expected in refused(path=path)


def test_unknown_key_from_set_and_env_suggests_the_closest() -> None:
    message = refused(["finetune.learnig_rate=0.1"])
    assert "finetune.learnig_rate (from --set): unknown key (did you mean finetune.learning_rate?)" in message
    message = refused(environ={"FTCTL_FINETUNE__LEARNIG_RATE": "0.1"})
    assert (
        "finetune.learnig_rate (from FTCTL_FINETUNE__LEARNIG_RATE): unknown key "
        "(did you mean finetune.learning_rate, i.e. FTCTL_FINETUNE__LEARNING_RATE?)"
    ) in message
    message = refused(["deploy.prot=5000"])
    assert "(did you mean deploy.port?)" in message
    # A misspelt section is reported for the section; the suggestion is the whole key that was meant.
    message = refused(["modle.name=x"])
    assert "modle (from --set): unknown key (did you mean model.name?)" in message
    message = refused(environ={"FTCTL_MODLE__NAME": "x"})
    assert (
        "modle (from FTCTL_MODLE__NAME): unknown key (did you mean model.name, i.e. FTCTL_MODEL__NAME?)"
        in message
    )


@pytest.mark.parametrize(
    ("key", "reported"),
    [
        ("finetune.zzz", "finetune.zzz"),
        ("bogus", "bogus"),
        ("finetune.lr", "finetune.lr"),
        ("xyzzy.name", "xyzzy"),
    ],
)
def test_unknown_key_without_a_close_match_suggests_nothing(key: str, reported: str) -> None:
    message = refused([f"{key}=1"])
    assert f"{reported} (from --set): unknown key" in message
    assert "did you mean" not in message


# --- as a user sees it -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (
            ["--set", "finetune.learning_rate=inf"],
            {},
            "finetune.learning_rate (from --set): Input should be a finite number",
        ),
        (
            ["--set", "finetune.learning_rate=nan"],
            {},
            "finetune.learning_rate (from --set): Input should be a finite number",
        ),
        ([], {"FTCTL_FINETUNE__LEARNING_RATE": "-inf"}, "(from FTCTL_FINETUNE__LEARNING_RATE)"),
        (["--set", "finetune.num_train_epochs=" + "1" + "0" * 30], {}, "less than or equal to 1000"),
        (["--set", "finetune.learnig_rate=1e-4"], {}, "(did you mean finetune.learning_rate?)"),
        (["--set", "finetune.apply_lora=maybe"], {}, "finetune.apply_lora (from --set): Input should be"),
    ],
)
def test_the_command_line_shows_one_clear_line(
    tmp_path: Path, args: list[str], env: dict[str, str], fragment: str
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ftctl", "--workspace", str(tmp_path / "ws"), *args, "status"],
        capture_output=True,
        text=True,
        env=base_env(env),
        cwd=tmp_path,
        timeout=60,
    )
    shown = f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert proc.returncode == 2, shown
    assert proc.stdout == "", shown
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid config: "), shown
    assert fragment in lines[0], shown
