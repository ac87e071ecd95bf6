"""`ftctl status` and `ftctl run` tell the truth about what is on disk and what is running.

Each case failed before the state carried output signatures, live checks and typed records:
- a deleted prepared file left prepare-data "up to date" (submit blamed the file instead);
- after `ftctl run` (which ends with teardown) or a killed server, deploy said "succeeded" with a URL,
  and `run --to deploy` / `--to score` / `--from deploy` started nothing;
- a stage whose ftctl died showed "running" forever;
- a hand-edited record met the code as a TypeError (exit 1, "unexpected").
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Workspace, kill_pids


def status(w: Workspace) -> dict[str, dict[str, Any]]:
    out = w.run("--json", "status").stdout
    return {stage["name"]: stage for stage in json.loads(out)["stages"]}


def endpoint_pid(w: Workspace) -> int | None:
    pid = w.record("deploy").get("outputs", {}).get("pid")
    return pid if pid and Path(f"/proc/{pid}").exists() else None


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, trained_ws: Any) -> Iterator[Workspace]:
    """A workspace after a full `ftctl run` (trained, registered, deployed, scored, torn down): the
    session's trained and registered snapshot, then `ftctl run` (deploy, score, teardown)."""
    w = Workspace(tmp_path_factory.mktemp("truth") / "ws")
    w.adopt(trained_ws, "trained")
    w.run("run")
    w.save("ran")
    yield w
    w.kill_strays()


def test_after_a_full_run_the_endpoint_is_down_and_run_again_does_nothing(ran: Workspace) -> None:
    ran.restore("ran")
    stages = status(ran)
    assert stages["deploy"]["status"] == "down"
    assert "is down" in ran.run("status").stdout
    assert all(stages[name]["status"] == "succeeded" for name in stages if name != "deploy")
    again = ran.run("run")
    assert "running" not in again.stderr.replace("up to date", ""), again.stderr
    assert ran.servers() == []


@pytest.mark.parametrize("args", [("--to", "deploy"), ("--to", "score"), ("--from", "deploy")])
def test_run_brings_a_down_endpoint_back(ran: Workspace, args: tuple[str, ...]) -> None:
    ran.restore("ran")
    out = ran.run("run", *args)
    assert "> deploy: running (its endpoint is down)" in out.stderr, out.stderr
    if args[0] == "--from":  # deploy, score and tear down again
        assert ran.servers() == [] and status(ran)["teardown"]["status"] == "succeeded"
    else:
        assert endpoint_pid(ran) and status(ran)["deploy"]["status"] == "succeeded"
    ran.kill_strays()


def test_a_killed_server_shows_down_and_run_to_score_recovers(ran: Workspace) -> None:
    ran.restore("ran")
    ran.run("run", "--to", "deploy")
    chat = subprocess.run(
        ran.argv("chat"), input="Hi\n", capture_output=True, text=True, env=ran.env, timeout=120
    )
    assert chat.returncode == 0 and "assistant> " in chat.stdout, chat.stderr
    pid = endpoint_pid(ran)
    assert pid
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if endpoint_pid(ran) is None:
            break
        time.sleep(0.05)
    assert status(ran)["deploy"]["status"] == "down"
    out = ran.run("run", "--to", "score")
    assert "> deploy: running" in out.stderr and "> score: running" in out.stderr, out.stderr
    assert status(ran)["deploy"]["status"] == "succeeded"
    kill_pids(ran.servers())


def test_a_deleted_prepared_file_makes_prepare_data_stale_and_run_recreates_it(ran: Workspace) -> None:
    ran.restore("ran")
    train = Path(ran.record("prepare-data")["outputs"]["files"]["train_sft"]["path"])
    train.unlink()
    stages = status(ran)
    assert stages["prepare-data"]["stale"]
    assert stages["prepare-data"]["stale_reason"] == "train_sft.jsonl is missing"
    assert stages["submit"]["stale_reason"].startswith("prepare-data is stale: train_sft.jsonl is missing")
    out = ran.run("run", "--to", "prepare-data")
    assert "> prepare-data: running (stale: train_sft.jsonl is missing)" in out.stderr
    assert train.is_file() and not status(ran)["prepare-data"]["stale"]


def test_a_changed_model_folder_makes_submit_stale(ran: Workspace) -> None:
    ran.restore("ran")
    model_dir = Path(ran.record("submit")["outputs"]["model_dir"])
    victim = next(p for p in sorted(model_dir.rglob("*")) if p.is_file())
    victim.write_bytes(victim.read_bytes() + b" ")
    assert status(ran)["submit"]["stale_reason"] == "model folder changed since it was written"


def test_a_stage_whose_ftctl_died_is_interrupted_with_the_command_that_resumes_it(ran: Workspace) -> None:
    ran.restore("ran")
    state = ran.state()
    state["stages"]["score"].update(status="running", outputs={})
    (ran.ws / "state.json").write_text(json.dumps(state))
    stages = status(ran)
    assert stages["score"]["status"] == "interrupted"
    assert "`ftctl score` resumes it" in ran.run("status").stdout


def test_a_deploy_whose_ftctl_died_with_its_server_up_is_interrupted(ran: Workspace) -> None:
    """ftctl killed after it recorded the server it started, before the stage ended: the record says
    `running`, the server serves, and no ftctl holds the lock. Status said `running` for ever (a hostile
    finding); it is `interrupted`, and `ftctl deploy` (what it names) takes the same server over."""
    ran.restore("ran")
    ran.run("deploy")
    pid = endpoint_pid(ran)
    assert pid is not None
    try:
        state = ran.state()
        state["stages"]["deploy"]["status"] = "running"
        (ran.ws / "state.json").write_text(json.dumps(state))
        assert status(ran)["deploy"]["status"] == "interrupted"
        assert "`ftctl deploy` resumes it" in ran.run("status").stdout
        ran.run("deploy")
        assert ran.record("deploy")["status"] == "succeeded" and endpoint_pid(ran) == pid
    finally:
        ran.run("teardown")


@pytest.mark.parametrize(
    ("stage", "change", "named"),
    [
        ("submit", {"outputs": {"train_loss": "low"}}, "stage submit: outputs.train_loss"),
        ("deploy", {"outputs": {"port": 70000}}, "stage deploy: outputs.port"),
        ("prepare-data", {"outputs": {"files": {"x": {"path": 3}}}}, "stage prepare-data: outputs.files"),
        ("auth", {"status": "done"}, "stage auth: status"),
        ("register", {"started_at": "yesterday"}, "stage register: started_at"),
        ("score", {"attempt": -1}, "stage score: attempt"),
    ],
)
def test_a_damaged_record_is_exit_2_naming_stage_and_field(
    ran: Workspace, stage: str, change: dict[str, Any], named: str
) -> None:
    ran.restore("ran")
    state = ran.state()
    state["stages"][stage].update(change)
    (ran.ws / "state.json").write_text(json.dumps(state))
    for command in (("status",), ("run",), (stage.replace("_", "-"),)):
        out = ran.run(*command, code=2)
        assert named in out.stderr and "Traceback" not in out.stderr, out.stderr
    # The hint's way out works: `ftctl reset STAGE` forgets the damaged record (it failed the same way)
    assert f"`ftctl reset {stage}`" in out.stderr, out.stderr
    ran.run("reset", stage)
    assert ran.state()["stages"][stage]["status"] == "pending"
    ran.run("status")  # exit 0 (run checks it)


def test_nan_in_the_state_file_is_refused_and_never_written(ran: Workspace) -> None:
    ran.restore("ran")
    text = (ran.ws / "state.json").read_text().replace('"train_loss": ', '"train_loss": NaN, "x": ', 1)
    (ran.ws / "state.json").write_text(text)
    assert "outputs.train_loss" in ran.run("status", code=2).stderr

    from ftctl.state import StateStore

    store = StateStore(ran.ws)
    ran.restore("ran")
    state = store.load()
    state["stages"]["submit"]["outputs"]["train_loss"] = float("nan")
    state["stages"]["submit"]["outputs"]["extra"] = [float("inf")]
    store.save(state)
    saved = json.loads((ran.ws / "state.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    assert saved["stages"]["submit"]["outputs"]["train_loss"] is None


def test_status_hashes_each_file_once(ran: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """One evaluation pass per command, and one hash per file per process."""
    from typer.testing import CliRunner

    from ftctl import state as st
    from ftctl.cli.app import app

    ran.restore("ran")
    hashed: list[Path] = []
    real = st.file_digest
    monkeypatch.setattr(st, "file_digest", lambda path: hashed.append(Path(path)) or real(path))
    monkeypatch.setattr(st, "_signatures", {})
    result = CliRunner().invoke(app, ["--workspace", str(ran.ws), "status"])
    assert result.exit_code == 0, result.output
    assert hashed and len(hashed) == len(set(hashed)), sorted(map(str, hashed))


def test_a_damaged_state_never_hides_or_orphans_a_live_endpoint(ran: Workspace) -> None:
    """The record of live processes survives a damaged state file: status names what still runs, and
    `reset --all` (the documented recovery) stops it before starting over."""
    ran.restore("ran")
    ran.run("run", "--to", "deploy")
    pid = endpoint_pid(ran)
    assert pid
    live = json.loads(ran.run("--json", "status").stdout)["live"]
    assert [item["kind"] for item in live] == ["endpoint"] and live[0]["recorded"]
    (ran.ws / "state.json").write_text("{ not json")
    out = ran.run("status", code=2)
    assert "still running: endpoint" in out.stderr and "`ftctl reset --all` stops them" in out.stderr
    ran.run("reset", "--all")
    for _ in range(100):
        if (
            not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
        ):
            break
        time.sleep(0.05)
    assert ran.servers() == []
    assert json.loads(ran.run("--json", "status").stdout)["live"] == []


def test_a_changed_registered_model_makes_register_stale(ran: Workspace) -> None:
    ran.restore("ran")
    model_dir = Path(ran.record("register")["outputs"]["model_dir"])
    victim = next(p for p in sorted(model_dir.rglob("*")) if p.is_file())
    victim.unlink()
    stages = status(ran)
    assert stages["register"]["stale_reason"] == "registered model changed since it was written"
    assert stages["deploy"]["stale_reason"].startswith("register is stale")
