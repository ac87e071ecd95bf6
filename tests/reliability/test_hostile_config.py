"""Config input a hostile tester found accepted, or crashing: duplicate YAML keys (the first value silently
lost), bytes that are not UTF-8 in `--set`, `FTCTL_*` variables and `ftctl config set` (an unexpected
UnicodeEncodeError, exit 1), and a bad FTCTL_THREADS noticed only when a trainer or an endpoint started
(exit 1 at deploy, the cause in a log).

Each case runs `python -m ftctl` as a process, as a user would (the bytes reach it as the shell passes
them): exit 2, one `error:` line naming the file and line or the key and where it came from, no
traceback, and nothing written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import base_env

BAD_BYTE = b"\xff".decode("utf-8", "surrogateescape")  # what Python makes of the byte 0xff in argv/env
TIMEOUT_S = 60.0


def ftctl(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`ftctl --workspace tmp_path/ws args` as a process (str arguments holding BAD_BYTE reach it as the
    byte 0xff, as os.fsencode writes them)."""
    return subprocess.run(
        [sys.executable, "-m", "ftctl", "--workspace", str(tmp_path / "ws"), *args],
        capture_output=True,
        text=True,
        errors="replace",
        env=base_env(env),
        cwd=tmp_path,
        timeout=TIMEOUT_S,
    )


def assert_refused(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    shown = f"exit {done.returncode}\n--- stdout\n{done.stdout[-2000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert done.returncode == 2, shown
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr, shown
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for fragment in fragments:
        assert fragment in done.stderr, f"missing {fragment!r}\n{shown}"


# --- duplicate keys --------------------------------------------------------------------------------------

DUPLICATES = {
    # name: (file contents, what the error says after the file name)
    "section": (
        "finetune:\n  learning_rate: 0.001\nfinetune:\n  max_steps: 3\n",
        ":3: finetune: duplicate key (first at line 1)",
    ),
    "key-in-a-section": (
        "finetune:\n  max_steps: 3\n  max_steps: 4\n",
        ":3: finetune.max_steps: duplicate key (first at line 2)",
    ),
    "quoted-and-plain": (
        "model:\n  name: a\n'model':\n  label: b\n",
        ":3: model: duplicate key (first at line 1)",
    ),
    "in-a-flow-mapping": (
        "data: {seed: 1, dedupe: true, seed: 2}\n",
        ":1: data.seed: duplicate key (first at line 1)",
    ),
    "top-level-setting": (
        "backend: local\nlock_timeout_s: 3\nbackend: local\n",
        ":3: backend: duplicate key (first at line 1)",
    ),
}


@pytest.mark.parametrize("name", list(DUPLICATES))
def test_duplicate_key_in_config_file_is_refused(name: str, tmp_path: Path) -> None:
    text, fragment = DUPLICATES[name]
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert_refused(ftctl(tmp_path, "--config", str(path), "config", "show"), f"{path}{fragment}")
    assert not (tmp_path / "ws").exists()


def test_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    """`<<: *anchor` twice merges both (YAML's merge keys), and a key that overrides a merged one is
    no duplicate."""
    path = tmp_path / "c.yaml"
    path.write_text("finetune: &a {seed: 1}\nscore: &b {seed: 2}\ndata:\n  <<: *a\n  <<: *b\n  seed: 5\n")
    done = ftctl(tmp_path, "--config", str(path), "--json", "config", "show")
    assert done.returncode == 0, done.stderr
    settings = {item["key"]: item["value"] for item in json.loads(done.stdout)["settings"]}
    assert (settings["data.seed"], settings["finetune.seed"], settings["score.seed"]) == (5, 1, 2)


def test_duplicate_key_in_workspace_settings_is_refused(tmp_path: Path) -> None:
    layer = tmp_path / "ws" / "config.yaml"
    layer.parent.mkdir()
    text = "finetune:\n  seed: 1\n  seed: 2\n"
    layer.write_text(text)
    assert_refused(
        ftctl(tmp_path, "config", "show"), f"{layer}:3: finetune.seed: duplicate key (first at line 2)"
    )
    # `config set` reads the layer before changing it: refused, and the file is left as it was.
    assert_refused(
        ftctl(tmp_path, "config", "set", "finetune.max_steps", "3"),
        f"{layer}:3: finetune.seed: duplicate key",
    )
    assert layer.read_text() == text


@pytest.mark.parametrize("how", ["--set", "env", "config set"])
def test_duplicate_key_in_an_override_is_refused(how: str, tmp_path: Path) -> None:
    value = "{seed: 1, seed: 2}"
    if how == "--set":
        done, origin = ftctl(tmp_path, "--set", f"finetune={value}", "config", "show"), "--set"
    elif how == "env":
        done = ftctl(tmp_path, "config", "show", env={"FTCTL_FINETUNE__SEED": "{a: 1, a: 2}"})
        origin = "FTCTL_FINETUNE__SEED"
    else:
        done = ftctl(tmp_path, "config", "set", "finetune.lora_target_modules", "{a: 1, a: 2}")
        origin = "config set"
    assert_refused(done, f"(from {origin})", "duplicate key")
    assert not (tmp_path / "ws" / "config.yaml").exists()


# --- bytes that are not UTF-8 ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--set", "env", "config set"])
@pytest.mark.parametrize("value", [BAD_BYTE, f"1{BAD_BYTE}", f"[a, b{BAD_BYTE}]"])
def test_override_that_is_not_utf8_is_refused(how: str, value: str, tmp_path: Path) -> None:
    if how == "--set":
        done = ftctl(tmp_path, "--set", f"finetune.max_steps={value}", "config", "show")
        where = "finetune.max_steps (from --set)"
    elif how == "env":
        done = ftctl(tmp_path, "config", "show", env={"FTCTL_FINETUNE__LEARNING_RATE": value})
        where = "finetune.learning_rate (from FTCTL_FINETUNE__LEARNING_RATE)"
    else:
        done = ftctl(tmp_path, "config", "set", "finetune.max_steps", value)
        where = "finetune.max_steps (from config set)"
    assert_refused(done, f"invalid config: {where}: not valid UTF-8")
    assert not (tmp_path / "ws" / "config.yaml").exists()


def test_override_key_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    assert_refused(
        ftctl(tmp_path, "--set", f"fine{BAD_BYTE}tune.seed=1", "config", "show"), "not valid UTF-8"
    )
    assert_refused(
        ftctl(tmp_path, "config", "show", env={f"FTCTL_FINE{BAD_BYTE}TUNE__SEED": "1"}),
        "not valid UTF-8",
    )


# --- FTCTL_THREADS -------------------------------------------------------------------------------------

ACCEPTED = "expected a whole number of threads, 1..4096"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("abc", "FTCTL_THREADS=abc"),
        ("0", "FTCTL_THREADS=0"),
        ("5000", "FTCTL_THREADS=5000"),
        ("1.5", "FTCTL_THREADS=1.5"),
        ("\u00b2", "FTCTL_THREADS="),  # a superscript two: a digit to str.isdigit, not to int()
        ("9" * 5000, "FTCTL_THREADS="),  # more digits than int() reads
        (BAD_BYTE, "FTCTL_THREADS="),
    ],
)
def test_bad_ftctl_threads_is_refused_before_anything_runs(value: str, shown: str, tmp_path: Path) -> None:
    done = ftctl(tmp_path, "run", "--to", "deploy", env={"FTCTL_THREADS": value})
    assert_refused(done, f"error: {shown}", ACCEPTED)
    assert not (tmp_path / "ws").exists(), "a stage ran"


def test_bad_ftctl_threads_is_refused_by_every_command_but_help(tmp_path: Path) -> None:
    env = {"FTCTL_THREADS": "abc"}
    for args in (["status"], ["config", "show"], ["submit"]):
        assert_refused(ftctl(tmp_path, *args, env=env), "FTCTL_THREADS=abc: " + ACCEPTED)
    assert ftctl(tmp_path, "--help", env=env).returncode == 0
    assert ftctl(tmp_path, "submit", "--help", env=env).returncode == 0


@pytest.mark.parametrize("value", ["2", " 3 ", ""])
def test_good_ftctl_threads_is_accepted(value: str, tmp_path: Path) -> None:
    done = ftctl(tmp_path, "config", "show", env={"FTCTL_THREADS": value})
    assert done.returncode == 0, done.stderr
