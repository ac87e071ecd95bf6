"""Bad input corpus: datasets, config files, --set values, environment variables, stage names.

Invalid records are dropped and reported (a warning naming file:line), as Azure's preprocessing does;
the stage fails (exit 2) only when fewer than data.min_train_rows valid training rows remain or the
source is unusable. So the corpus has both kinds:
  - unusable input -> exit 2, one error naming the file (and line) or the key path, no traceback, no new
    or half-written file in the download folder, and the state shows the stage failed (data) or is
    byte-for-byte untouched (config, arguments);
  - mostly good input with bad records -> exit 0, every dropped record named by its line number, and
    exactly the good records written.

The commands run in-process (typer's CliRunner: the same code path as the `ftctl` command, without a
Python start-up per case) on a copy of the shared prepared workspace.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ftctl.cli.app import app

from .conftest import Workspace


def good(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": f"question number {i}?"},
            {"role": "assistant", "content": f"answer number {i}."},
        ]
    }


def line(record: Any) -> bytes:
    return json.dumps(record).encode() + b"\n"


def jsonl_dir(root: Path, name: str, content: bytes | list[bytes], split: str = "train_sft") -> Path:
    folder = root / name
    folder.mkdir()
    data = content if isinstance(content, bytes) else b"".join(content)
    (folder / f"{split}.jsonl").write_bytes(data)
    return folder


def with_bad(bad: dict[int, bytes], total: int = 14) -> list[bytes]:
    """`total` lines, good except those at the (1-based) line numbers in `bad`."""
    return [bad.get(n, line(good(n))) for n in range(1, total + 1)]


def msg(role: Any = "user", content: Any = "hi") -> dict[str, Any]:
    return {"role": role, "content": content}


@dataclass
class Case:
    name: str
    make: Callable[[Path], list[str]]  # builds its files under the folder given; returns the argv
    code: int
    fragments: list[str]  # must appear in stderr ("{src}" is the folder `make` built, when it is one)
    state: str  # "failed" (prepare-data failed), "untouched" (state.json unchanged), "succeeded"
    dropped: list[int] = field(default_factory=list)  # exit 0: the line numbers reported as dropped
    rows: int | None = None  # exit 0: rows written to train_sft.jsonl


def ds(content: bytes | list[bytes], split: str = "train_sft") -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        return ["prepare-data", "--force", "--dataset", str(jsonl_dir(root, "src", content, split))]

    return make


def all_bad(name: str, record_line: bytes, reason: str) -> Case:
    """12 lines, all invalid the same way: exit 2 naming the file, and the first lines with the reason."""
    return Case(f"all-bad-{name}", ds([record_line] * 12), 2,
                ["{src}/train_sft.jsonl: only 0 valid training rows (12 read, 12 dropped)",
                 f"train_sft.jsonl:1: {reason}", f"train_sft.jsonl:2: {reason}"], "failed")  # fmt: skip


def parquet_dir(columns: dict[str, list[Any]]) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = root / "src"
        (folder / "data").mkdir(parents=True)
        pq.write_table(pa.table(columns), folder / "data" / "train_sft-00000-of-00001.parquet")
        return ["prepare-data", "--force", "--dataset", str(folder)]

    return make


def corrupt_parquet(root: Path) -> list[str]:
    folder = root / "src"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train_sft-00000-of-00001.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    return ["prepare-data", "--force", "--dataset", str(folder)]


def config_file(text: bytes, *args: str) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        path = root / "my.yaml"
        path.write_bytes(text)
        return ["--config", str(path), *args]

    return make


def argv(*args: str) -> Callable[[Path], list[str]]:
    return lambda root: list(args)


def held_out_all_bad(root: Path) -> list[str]:
    """A good train split beside a test split none of whose records is valid: before the fix prepare-data
    passed (`test_sft: 0 rows, 24 dropped`) and the gate, with no held-out loss, registered the model."""
    folder = jsonl_dir(root, "src", [line(good(i)) for i in range(12)])
    (folder / "test_sft.jsonl").write_bytes(b"{not json\n" * 4)
    return ["prepare-data", "--force", "--dataset", str(folder)]


def empty_dir(root: Path) -> list[str]:
    (root / "src").mkdir()
    return ["prepare-data", "--force", "--dataset", str(root / "src")]


def a_file(root: Path) -> list[str]:
    (root / "src").write_bytes(line(good(1)) * 20)
    return ["prepare-data", "--force", "--dataset", str(root / "src")]


def fifty_mb_line(root: Path) -> list[str]:
    record = {"messages": [{"role": "user", "content": "x" * (50 * 1024 * 1024)}]}
    return ["prepare-data", "--force", "--dataset", str(jsonl_dir(root, "src", line(record)))]


CASES = [
    # --- unusable datasets: exit 2 naming the file -----------------------------------------------
    all_bad("malformed-json", b"{not json\n", "invalid JSON"),
    all_bad("non-utf8", '{"messages": "caf\xe9"}\n'.encode("latin-1"), "not valid UTF-8"),
    all_bad("wrong-role", line({"messages": [msg("bot"), msg("assistant")]}), "message 0 has role 'bot'"),
    all_bad("missing-role", line({"messages": [{"content": "hi"}, msg("assistant")]}),
            "message 0 has no 'role'"),
    all_bad("empty-content", line({"messages": [msg(), msg("assistant", "  ")]}),
            "message 1 content is empty"),
    all_bad("single-message", line({"messages": [msg()]}), "fewer than 2 messages (1)"),
    all_bad("no-messages-key", line({"prompt": "hi", "prompt_id": "1"}), "no 'messages' field"),
    all_bad("messages-not-list", line({"messages": "hello"}), "'messages' is not a list"),
    all_bad("content-not-string", line({"messages": [msg(), msg("assistant", 42)]}),
            "message 1 content is not a string"),
    all_bad("record-is-list", line([msg(), msg("assistant")]), "not an object (got a list)"),
    all_bad("message-not-object", line({"messages": [msg(), "hello"]}), "message 1 is not an object"),
    all_bad("deeply-nested", b"[" * 100_000 + b"]" * 100_000 + b"\n", "invalid JSON: nested too deeply"),
    Case("nine-valid-rows", ds([line(good(i)) for i in range(9)]), 2,
         ["{src}/train_sft.jsonl: only 9 valid training rows", "at least 10 needed"], "failed"),
    Case("fifty-mb-single-line", fifty_mb_line, 2,
         ["{src}/train_sft.jsonl: only 0 valid training rows", "train_sft.jsonl:1: fewer than 2 messages"],
         "failed"),
    Case("empty-file", ds(b""), 2, ["{src}/train_sft.jsonl: only 0 valid training rows"], "failed"),
    Case("blank-lines-only", ds(b"\n   \n\t\n"), 2, ["{src}/train_sft.jsonl: only 0 valid"], "failed"),
    Case("no-train-split", ds([line(good(i)) for i in range(12)], split="test_sft"), 2,
         ["the train split 'train_sft' is not among the splits (test_sft)"], "failed"),
    Case("held-out-split-all-bad", held_out_all_bad, 2,
         ["{src}/test_sft.jsonl: no valid held-out rows (4 read, 4 dropped)",
          "test_sft.jsonl:1: invalid JSON"], "failed"),
    Case("empty-directory", empty_dir, 2, ["{src}: no dataset found there"], "failed"),
    Case("dataset-is-a-file", a_file, 2, ["{src}: is a file that is not .jsonl, .json, .csv or .parquet"],
         "failed"),
    Case("dataset-missing", argv("prepare-data", "--force", "--dataset", "./no/such/folder"), 2,
         ["./no/such/folder: no such folder"], "failed"),
    Case("parquet-wrong-schema", parquet_dir({"text": [f"row {i}" for i in range(12)]}), 2,
         ["split train_sft: only 0 valid training rows", "train_sft:1: no 'messages' field"], "failed"),
    Case("parquet-messages-wrong-type", parquet_dir({"messages": [f"row {i}" for i in range(12)]}), 2,
         ["split train_sft: only 0 valid training rows", "train_sft:1: 'messages' is not a list"], "failed"),
    Case("parquet-corrupt", corrupt_parquet, 2, ["{src}", "train_sft"], "failed"),
    # --- mostly good datasets: exit 0, the dropped lines named -------------------------------------
    Case("mixed-bad-lines", ds(with_bad({3: b"{oops\n", 7: line({"messages": [msg()]}),
                                         11: line({"messages": [msg("robot"), msg("assistant")]})})), 0,
         ["train_sft.jsonl:3: invalid JSON", "train_sft.jsonl:7: fewer than 2 messages",
          "train_sft.jsonl:11: message 0 has role 'robot'"], "succeeded", dropped=[3, 7, 11], rows=11),
    Case("mixed-non-utf8-line", ds(with_bad({5: b'{"messages": "\xff\xfe"}\n'})), 0,
         ["train_sft.jsonl:5: not valid UTF-8"], "succeeded", dropped=[5], rows=13),
    Case("mixed-truncated-last-line", ds([*with_bad({}, 12), b'{"messages": [{"role": "us']), 0,
         ["train_sft.jsonl:13: invalid JSON"], "succeeded", dropped=[13], rows=12),
    Case("mixed-empty-content-and-missing-key",
         ds(with_bad({1: line({"messages": [msg(), msg("assistant", "")]}), 14: line({"text": "x"})})), 0,
         ["train_sft.jsonl:1: message 1 content is empty", "train_sft.jsonl:14: no 'messages' field"],
         "succeeded", dropped=[1, 14], rows=12),
    # --- config files: exit 2 naming file, line and key path; the state untouched ------------------
    Case("yaml-syntax-error", config_file(b"data:\n  split_pc: [10\nfinetune:\n  seed: 1\n", "prepare-data"),
         2, ["{root}/my.yaml:3: "], "untouched"),
    Case("yaml-unknown-key", config_file(b"finetune:\n  seed: 3\n  learnin_rate: 0.1\n", "prepare-data"), 2,
         ["{root}/my.yaml:3: finetune.learnin_rate: unknown key"], "untouched"),
    Case("yaml-unknown-section", config_file(b"modle:\n  name: x\n", "prepare-data"), 2,
         ["{root}/my.yaml:1: modle: unknown key"], "untouched"),
    Case("yaml-wrong-type", config_file(b"data:\n  split_pc: lots\n", "prepare-data"), 2,
         ["{root}/my.yaml:2: data.split_pc:"], "untouched"),
    Case("yaml-out-of-range", config_file(b"finetune:\n  lora_dropout: 1.5\n", "prepare-data"), 2,
         ["{root}/my.yaml:2: finetune.lora_dropout:"], "untouched"),
    Case("yaml-not-a-mapping", config_file(b"- a\n- b\n", "prepare-data"), 2,
         ["{root}/my.yaml: the top level must be a mapping"], "untouched"),
    Case("yaml-section-is-a-value", config_file(b"finetune: 3\n", "prepare-data"), 2,
         ["{root}/my.yaml:1: finetune:"], "untouched"),
    Case("yaml-not-utf8", config_file(b"data:\n  dataset: caf\xe9\n", "prepare-data"), 2,
         ["{root}/my.yaml"], "untouched"),
    Case("config-missing", argv("--config", "/no/such/ftctl.yaml", "prepare-data"), 2,
         ["config file /no/such/ftctl.yaml does not exist"], "untouched"),
    # --- --set, environment, options, stage names ------------------------------------------------
    Case("set-without-equals", argv("--set", "finetune.seed", "prepare-data"), 2,
         ["--set 'finetune.seed': expected key.path=value"], "untouched"),
    Case("set-unknown-key", argv("--set", "finetune.lr=1", "prepare-data"), 2,
         ["finetune.lr (from --set): unknown key"], "untouched"),
    Case("set-wrong-type", argv("--set", "data.split_pc=abc", "prepare-data"), 2,
         ["data.split_pc (from --set):"], "untouched"),
    Case("set-empty-path-part", argv("--set", "data..split_pc=5", "prepare-data"), 2,
         ["--set 'data..split_pc=5': expected key.path=value"], "untouched"),
    Case("set-under-a-value", argv("--set", "lock_timeout_s.x=1", "prepare-data"), 2,
         ["lock_timeout_s"], "untouched"),
    Case("option-split-pc-zero", argv("prepare-data", "--split-pc", "0"), 2,
         ["data.split_pc (from --set):"], "untouched"),
    Case("env-unknown-key", argv("prepare-data"), 2,
         ["finetune.learnin_rate (from FTCTL_FINETUNE__LEARNIN_RATE): unknown key"], "untouched"),
    Case("unknown-stage-run", argv("run", "--to", "deploi"), 2, ["unknown stage 'deploi'"], "untouched"),
    Case("unknown-stage-reset", argv("reset", "deploi"), 2, ["unknown stage 'deploi'"], "untouched"),
    Case("unknown-backend", argv("--backend", "gcp", "prepare-data"), 2,
         ["--backend must be local or azureml"], "untouched"),
]  # fmt: skip
ENV_FOR = {"env-unknown-key": {"FTCTL_FINETUNE__LEARNIN_RATE": "0.1"}}


@pytest.fixture(scope="module")
def ws(shared_ws: Workspace) -> Workspace:
    shared_ws.restore("prepared")
    return shared_ws


def listing(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file (hidden ones too) in the folder."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def test_a_refused_dataset_then_a_good_one(ws: Workspace, tmp_path: Path) -> None:
    """After prepare-data refused a dataset (exit 2, the stage failed, the data folder as it was), the
    next good dataset is prepared: the refusal leaves nothing behind that stops it."""
    files_before = listing(ws.ws / "data")
    refused = ws("--set", "data.split_pc=100", "prepare-data", "--force", "--dataset",
                 str(jsonl_dir(tmp_path, "nine", [line(good(i)) for i in range(9)])), code=2)  # fmt: skip
    assert "only 9 valid training rows" in refused.stderr, refused.stderr
    assert ws.record("prepare-data")["status"] == "failed" and listing(ws.ws / "data") == files_before
    ws("--set", "data.split_pc=100", "prepare-data", "--dataset",
       str(jsonl_dir(tmp_path, "twelve", [line(good(i)) for i in range(12)])))  # fmt: skip
    rec = ws.record("prepare-data")
    assert rec["status"] == "succeeded" and rec["outputs"]["files"]["train_sft"]["rows"] == 12, rec
    assert len((ws.ws / "data" / "train_sft.jsonl").read_text().splitlines()) == 12


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_dataset_file_that_is_no_regular_file_is_refused_at_once(
    kind: str, ws: Workspace, tmp_path: Path
) -> None:
    """A .jsonl that is a FIFO blocked prepare-data for ever; a link to /dev/zero kept it at 100% CPU for
    10 minutes. Run in a process of its own with a time limit, so that a regression fails, not hangs."""
    import subprocess
    import sys

    dataset = tmp_path / "data.jsonl"
    if kind == "fifo":
        os.mkfifo(dataset)
    else:
        dataset.symlink_to("/dev/zero")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTCTL_")}
    done = subprocess.run(
        [sys.executable, "-m", "ftctl", "--workspace", str(ws.ws), "prepare-data", "--force", "--dataset",
         str(dataset)],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{dataset}: is not a regular file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input(case: Case, ws: Workspace, tmp_path: Path) -> None:
    args = case.make(tmp_path)
    data_dir = ws.ws / "data"
    state_before = (ws.ws / "state.json").read_bytes()
    files_before = listing(data_dir)
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FTCTL_")}
    env.update(ENV_FOR.get(case.name, {}))
    result = CliRunner().invoke(app, ["--workspace", str(ws.ws), *args], env=env)
    stderr, stdout = result.stderr, result.stdout
    shown = f"exit {result.exit_code}\n--- stdout\n{stdout[-2000:]}\n--- stderr\n{stderr[-4000:]}"

    assert result.exit_code == case.code, shown
    assert isinstance(result.exception, SystemExit) or result.exception is None, repr(result.exception)
    assert "Traceback" not in stdout + stderr, shown
    for fragment in case.fragments:
        expected = fragment.format(src=tmp_path / "src", root=tmp_path)
        assert expected in stderr, f"missing {expected!r}\n{shown}"
    if case.code == 2:
        errors = [text for text in stderr.splitlines() if text.startswith("error: ")]
        assert len(errors) == 1, shown  # one error (its detail lines indented below it), then a hint

    state = json.loads((ws.ws / "state.json").read_text())
    before = json.loads(state_before)
    others = {n: r for n, r in state["stages"].items() if n != "prepare-data"}
    unchanged = {n: r for n, r in before["stages"].items() if n != "prepare-data"}
    assert others == unchanged, "other stages changed"
    files_after = listing(data_dir)
    if case.state == "untouched":
        assert (ws.ws / "state.json").read_bytes() == state_before, "the state file changed"
        assert files_after == files_before
    elif case.state == "failed":
        rec = state["stages"]["prepare-data"]
        assert rec["status"] == "failed" and rec["error"]["type"] == "DataError", rec
        assert files_after == files_before, "the download folder changed"
    else:
        rec = state["stages"]["prepare-data"]
        assert rec["status"] == "succeeded", rec
        reported = sorted(
            int(text.split("train_sft.jsonl:")[1].split(":")[0])
            for text in stderr.splitlines()
            if "dropped train_sft.jsonl:" in text
        )
        assert reported == case.dropped, shown
        assert set(files_after) == set(files_before) | {"train_sft.jsonl"}, files_after
        written = (data_dir / "train_sft.jsonl").read_text().splitlines()
        assert len(written) == case.rows == rec["outputs"]["files"]["train_sft"]["rows"]
        assert all(json.loads(text)["messages"][0]["content"].startswith("question") for text in written)
    assert not [name for name in files_after if name.endswith(".tmp")], files_after
