"""The stage rules through the CLI, on the real (fast) first four local stages."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ftctl.pipeline import ORDER

ROOT = Path(__file__).resolve().parent.parent
FIRST_FOUR = ["auth", "pick-model", "check-compute", "prepare-data"]


@pytest.fixture
def prepared(ftctl, prepared_ws):
    """`ftctl run --to prepare-data` done: the session's prepared workspace, copied."""
    return ftctl.load(prepared_ws)


def test_help_lists_every_stage_and_the_readme_documents_them(ftctl) -> None:
    result = ftctl("--help")
    readme = (ROOT / "README.md").read_text()
    for name in [*ORDER, "run", "status", "reset"]:
        assert name in result.stdout
        assert f"ftctl {name}" in readme, f"README does not show `ftctl {name}`"
        sub = ftctl(name, "--help")
        assert "Usage:" in sub.stdout


def test_run_to_then_everything_up_to_date(prepared) -> None:
    status = prepared.status()
    assert [s for s in ORDER if status[s]["status"] == "succeeded"] == FIRST_FOUR
    assert all(not status[s]["stale"] for s in ORDER)
    assert status["prepare-data"]["outputs"]["files"]["train_sft"]["rows"] == 400
    again = prepared("run", "--to", "prepare-data")
    for name in FIRST_FOUR:
        assert f"- {name}: up to date" in again.stderr
    assert prepared.state()["stages"]["auth"]["attempt"] == 1


def test_config_change_makes_the_stage_stale_with_the_reason(prepared) -> None:
    status = {s["name"]: s for s in prepared.json("--set", "data.split_pc=50", "status")["stages"]}
    assert status["prepare-data"]["stale"] is True
    assert status["prepare-data"]["stale_reason"] == "data.split_pc changed (100.0 -> 50.0)"
    assert not status["check-compute"]["stale"]
    table = prepared("--set", "data.split_pc=50", "status").stdout
    assert "stale: data.split_pc changed (100.0 -> 50.0)" in table
    rerun = prepared("--set", "data.split_pc=50", "run", "--to", "prepare-data")
    assert "> prepare-data: running (stale: data.split_pc changed (100.0 -> 50.0))" in rerun.stderr
    assert "- check-compute: up to date" in rerun.stderr
    assert prepared.state()["stages"]["prepare-data"]["outputs"]["files"]["train_sft"]["rows"] == 200


def test_edited_input_file_makes_the_stage_stale(prepared) -> None:
    sample = prepared.root / "my-data"
    sample.mkdir()
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(12)
    ]
    (sample / "train_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepared("--set", f"data.dataset={sample}", "prepare-data")
    (sample / "train_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:11]))
    status = {s["name"]: s for s in prepared.json("--set", f"data.dataset={sample}", "status")["stages"]}
    assert status["prepare-data"]["stale_reason"] == "dataset changed"


def test_force_reruns(prepared) -> None:
    result = prepared("run", "--to", "auth", "--force")
    assert "> auth: running (forced)" in result.stderr
    assert prepared.state()["stages"]["auth"]["attempt"] == 2


def test_stage_command_skips_when_up_to_date_and_force_reruns(prepared) -> None:
    result = prepared("check-compute")
    assert "check-compute: up to date" in result.stderr
    prepared("check-compute", "--force")
    assert prepared.state()["stages"]["check-compute"]["attempt"] == 2


def test_stage_refuses_when_upstream_missing(ftctl) -> None:
    result = ftctl("submit", code=2)
    assert "submit needs check-compute, which is pending" in result.stderr
    assert "run `ftctl check-compute` first" in result.stderr
    assert not (ftctl.workspace / "jobs").exists()


def test_run_from_refuses_when_earlier_stages_missing(ftctl) -> None:
    result = ftctl("run", "--from", "check-compute", code=2)
    assert "`ftctl pick-model`" in result.stderr


def test_run_from_after_to_is_an_error(ftctl) -> None:
    result = ftctl("run", "--from", "submit", "--to", "auth", code=2)
    assert "--from submit comes after --to auth" in result.stderr


def test_unknown_stage_name(ftctl) -> None:
    result = ftctl("run", "--to", "deploi", code=2)
    assert "unknown stage 'deploi'" in result.stderr


def test_failing_stage_records_the_error_and_prints_the_rerun_command(prepared) -> None:
    bad = prepared.root / "bad"
    bad.mkdir()
    (bad / "train_sft.jsonl").write_text('{"messages": []}\nnot json\n')
    result = prepared("prepare-data", "--dataset", str(bad), code=2)
    assert "re-run it with `ftctl prepare-data`" in result.stderr
    assert "Traceback" not in result.stderr
    record = prepared.state()["stages"]["prepare-data"]
    assert record["status"] == "failed"
    assert record["error"]["type"] == "DataError"
    # The earlier files are untouched: nothing half-written.
    assert len((prepared.workspace / "data" / "train_sft.jsonl").read_text().splitlines()) == 400


def test_corrupt_state_file_gives_the_way_back(prepared) -> None:
    prepared("run", "--to", "auth", "--force")
    (prepared.workspace / "state.json").write_text("{ truncated")
    result = prepared("status", code=2)
    assert "state.json" in result.stderr and "cannot be parsed" in result.stderr
    assert "ftctl reset --restore-backup" in result.stderr
    prepared("reset", "--restore-backup")
    assert prepared.status()["prepare-data"]["status"] == "succeeded"


def test_reset_all_with_unreadable_state(prepared) -> None:
    (prepared.workspace / "state.json").write_text("nonsense")
    prepared("reset", "--all")
    assert (prepared.workspace / "state.json.corrupt").exists()
    assert all(s["status"] == "pending" for s in prepared.status().values())


def test_reset_forgets_the_stage_and_downstream(prepared) -> None:
    result = prepared.json("reset", "pick-model")
    assert result["reset"] == [
        "pick-model",
        "check-compute",
        "submit",
        "register",
        "deploy",
        "score",
        "teardown",
    ]
    status = prepared.status()
    assert status["auth"]["status"] == status["prepare-data"]["status"] == "succeeded"
    assert status["pick-model"]["status"] == "pending"


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ftctl.state import WorkspaceLock
    with WorkspaceLock(Path(sys.argv[1]), "ftctl submit", 5):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_locked_workspace_fails_naming_the_owner(ftctl) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ftctl.workspace)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        result = ftctl("--set", "lock_timeout_s=0.2", "auth", code=1)
        assert f"locked by another ftctl (pid {holder.pid}" in result.stderr
        assert "`ftctl submit`" in result.stderr
        ftctl("status")  # reading never needs the lock
    finally:
        holder.kill()
        holder.wait()


def test_backend_mismatch_is_refused(prepared) -> None:
    result = prepared("--backend", "azureml", "auth", code=2)
    assert "holds a local run" in result.stderr


def test_bad_backend_and_bad_set(ftctl) -> None:
    assert "--backend must be local or azureml" in ftctl("--backend", "gcp", "status", code=2).stderr
    assert "finetune.lr (from --set): unknown key" in ftctl("--set", "finetune.lr=1", "run", code=2).stderr
    assert not (ftctl.workspace / "state.json").exists()


def test_json_output_of_a_stage(ftctl) -> None:
    out = ftctl.json("auth")
    assert out["stage"] == "auth" and out["status"] == "succeeded"
    assert out["outputs"]["tracking_uri"].startswith("sqlite:///")


def test_state_and_outputs_hold_no_secrets(prepared) -> None:
    text = (prepared.workspace / "state.json").read_text()
    assert "key" not in json.loads(text)["stages"]["auth"]["outputs"]


def test_notebook_drives_real_commands(ftctl) -> None:
    import re

    notebook = json.loads((ROOT / "notebooks" / "ftctl_phi3_ultrachat.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code")
    used = re.findall(r'ftctl\("([a-z-]+)"', code)
    assert used[:9] == ORDER
    for name in used:
        ftctl(name, "--help")


def test_settings_added_by_a_newer_ftctl_do_not_make_stages_stale(prepared) -> None:
    state = prepared.state()
    params = state["stages"]["prepare-data"]["fingerprint"]["params"]
    params.pop("data.min_train_rows")  # as if recorded before the setting existed
    params["data.retired_setting"] = 1  # and a setting this version dropped
    (prepared.workspace / "state.json").write_text(json.dumps(state))
    assert not prepared.status()["prepare-data"]["stale"]
    status = {s["name"]: s for s in prepared.json("--set", "data.min_train_rows=20", "status")["stages"]}
    assert status["prepare-data"]["stale_reason"] == "data.min_train_rows changed (null -> 20)"


def test_top_level_help_has_examples(ftctl) -> None:
    shown = ftctl("--help").stdout
    assert "Examples:" in shown and "ftctl run" in shown and "--set finetune.learning_rate=1e-4" in shown


def test_flags_show_as_flags_in_help(ftctl) -> None:
    shown = ftctl("status", "--help").stdout
    assert "<bool>" not in shown and "--json" in shown


def test_set_and_config_after_the_subcommand_mean_the_same(ftctl) -> None:
    before = ftctl.json("--set", "finetune.learning_rate=1e-4", "status")
    after = ftctl.json("status", "--set", "finetune.learning_rate=1e-4")
    assert before == after
    bad = ftctl("status", "--set", "finetune.learnig_rate=1", code=2)
    assert "did you mean finetune.learning_rate" in bad.stderr


def test_a_closed_pipe_exits_quietly(tmp_path) -> None:
    """`ftctl status | head -1`: a reader that leaves early gets no BrokenPipeError from ftctl."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ftctl", "--workspace", str(tmp_path / "ws"), "status"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before ftctl writes a byte
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "BrokenPipe" not in stderr and "unexpected" not in stderr and "Traceback" not in stderr, stderr
