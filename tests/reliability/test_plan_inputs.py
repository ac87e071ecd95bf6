"""`ftctl plan` (both backends count tokens with ftctl.data.chat_tokens) on prepared files that were damaged
or removed after prepare-data, and on a tokenizer folder that holds no tokenizer: exit 2 naming the file
and line (or the config key), never an "unexpected" error. Found planning Azure ML runs: invalid UTF-8 in
a prepared file was "unexpected UnicodeDecodeError" (exit 1), a deleted one "unexpected
FileNotFoundError"."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import Ftctl


@pytest.fixture(scope="module")
def prepared_10pc(tmp_path_factory: pytest.TempPathFactory) -> Ftctl:
    """A local workspace with 10% of the sample prepared, once for the module."""
    ws = Ftctl(tmp_path_factory.mktemp("prepared-10pc"))
    ws("--set", "data.split_pc=10", "run", "--to", "prepare-data")
    return ws


@pytest.fixture
def prepared(ftctl, prepared_10pc: Ftctl) -> Path:
    """A local workspace with 10% of the sample prepared (a copy of the module's); its training file."""
    ftctl.load(prepared_10pc)
    return Path(ftctl.state()["stages"]["prepare-data"]["outputs"]["files"]["train_sft"]["path"])


def _plan(ftctl, *args: str):
    return ftctl("--set", "data.split_pc=10", *args, "plan", "--no-calibrate", code=None)


@pytest.mark.parametrize(
    ("damage", "wanted"),
    [
        (b'{"messages": [{"role": "user", "content": "\xff\xfe broken"}]}\n', "not valid UTF-8"),
        (b'{"messages": [{"role": "user", "content": "\xed\xa0\x80 surrogate"}]}\n', "not valid UTF-8"),
        (b'{"messages": nope\n', "not valid JSON"),
    ],
    ids=["invalid-utf8", "encoded-surrogate", "invalid-json"],
)
def test_a_damaged_prepared_file_names_its_line(ftctl, prepared: Path, damage: bytes, wanted: str) -> None:
    lines = prepared.read_bytes().count(b"\n")
    prepared.write_bytes(prepared.read_bytes() + damage)
    result = _plan(ftctl)
    assert result.exit_code == 2, result.stderr
    assert f"{prepared}:{lines + 1}: {wanted}" in result.stderr
    assert "unexpected" not in result.stderr


def test_a_deleted_prepared_file_says_what_to_run(ftctl, prepared: Path) -> None:
    prepared.unlink()
    result = _plan(ftctl)
    assert result.exit_code == 2, result.stderr
    assert f"{prepared}: no such data file" in result.stderr and "ftctl prepare-data" in result.stderr
    assert "unexpected" not in result.stderr


def test_a_tokenizer_folder_without_a_tokenizer(ftctl, prepared: Path, tmp_path: Path) -> None:
    """plan.tokenizer is Azure ML's; on that backend a folder with no tokenizer files is named as such
    (tests/azureml/test_azureml_plan.py runs it there); the shared loader says so on either backend."""
    from ftctl.data.chat_tokens import load_chat_tokenizer
    from ftctl.errors import UsageError

    empty = tmp_path / "no-tokenizer"
    empty.mkdir()
    with pytest.raises(UsageError, match="no tokenizer files"):
        load_chat_tokenizer(empty)


@pytest.mark.parametrize("damage", [b"{not json", b'{"stats": {"split": 1}}', b"\xff\xfe", b""])
def test_a_damaged_token_cache_is_measured_again(ftctl, prepared: Path, damage: bytes) -> None:
    """plan/tokens-*.json damaged (a killed writer on a filesystem without atomic rename, a hand edit):
    the statistics are counted again and the file rewritten, never an "unexpected" error."""
    first = _plan(ftctl)
    assert first.exit_code == 0, first.stderr
    caches = sorted((ftctl.workspace / "plan").glob("tokens-*.json"))
    assert caches
    for cache in caches:
        cache.write_bytes(damage)
    again = _plan(ftctl, "--json")
    assert again.exit_code == 0, again.stderr
    assert all(cache.read_bytes() != damage for cache in caches)
