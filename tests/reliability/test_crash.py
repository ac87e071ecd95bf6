"""Crash anywhere: SIGKILL `ftctl` (and its process group) at seeded random points inside every stage.

After every kill:
  - the state file exists and parses, and every stage recorded as succeeded really finished (its
    files, job, model version... are there and match what was recorded);
  - no endpoint server is left running that the state does not record (the one alive, if any, is the
    pid in deploy's outputs), and no training job ran twice;
  - `ftctl status` works, and re-running the stage completes.

Detached processes are detached by design: a killed `submit` leaves its training job running and the
next `ftctl submit` re-attaches to it; a killed `deploy` leaves its server running only if the server was
recorded, and the next `ftctl deploy` re-attaches to it. Two kill points are injected exactly (a wrapper
SIGKILLs ftctl right after it spawned the job / the server) because random delays rarely hit them; and
one command is killed at each of its file commits in turn (every os.replace).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from ftctl.backends.local.serving.probe import port_is_open

from .conftest import FAST_ENV, Outcome, Workspace, listening_addresses, registered_versions

TRIALS: list[dict[str, Any]] = []  # every kill, for the summary at the end


@pytest.fixture
def w(shared_ws: Workspace) -> Workspace:
    return shared_ws


@pytest.fixture
def trained_w(shared_ws: Workspace, trained_ws: Any) -> Workspace:
    """shared_ws restored from the session's trained and registered snapshot (tests/conftest.py), whatever
    ran before: the register and deploy trials need no submit trial before them."""
    if not shared_ws.has("session-trained"):
        shared_ws.adopt(trained_ws, "session-trained")
    shared_ws.restore("session-trained")
    return shared_ws


# --- invariants ------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_succeeded(w: Workspace, name: str, rec: dict[str, Any]) -> None:
    out = rec["outputs"]
    assert rec["ended_at"] and out, f"{name} is recorded as succeeded without outputs: {rec}"
    if name == "auth":
        assert (w.ws / "mlflow.db").is_file()
    elif name == "pick-model":
        assert Path(out["path"], "config.json").is_file()
    elif name == "check-compute":
        assert out["device"] in ("cpu", "cuda")
    elif name == "prepare-data":
        for split, info in out["files"].items():
            path = Path(info["path"])
            assert path.is_file(), f"prepare-data succeeded but {path} is missing"
            assert sha256(path) == info["sha256"], f"{split}.jsonl does not match its recorded sha256"
            assert len(path.read_text(encoding="utf-8").splitlines()) == info["rows"]
    elif name == "submit":
        status = json.loads(Path(out["job_dir"], "status.json").read_text())
        assert status["state"] == "completed", status
        assert Path(out["model_dir"]).is_dir()
    elif name == "register":
        assert (out["model_name"], out["version"]) in registered_versions(w.ws)
    elif name == "deploy":
        assert out["pid"] and out["port"] and Path(out["key_file"]).parent == w.ws / "secrets"
    elif name == "score":
        json.loads(Path(out["request_file"]).read_text())
        assert out["http_status"] == 200
    elif name == "teardown":
        assert out["port_closed"] is True


def started_jobs(w: Workspace) -> list[Path]:
    """Job folders whose wrapper started (it records started_at when it begins to run the trainer)."""
    jobs = w.ws / "jobs"
    found = []
    for job in sorted(jobs.iterdir()) if jobs.is_dir() else []:
        try:
            status = json.loads((job / "status.json").read_text())
        except (OSError, ValueError):
            continue
        if status.get("started_at"):
            found.append(job)
    return found


def check_invariants(w: Workspace, context: str) -> dict[str, Any]:
    state_file = w.ws / "state.json"
    assert state_file.is_file(), f"{context}: the state file is gone"
    state = json.loads(state_file.read_text(encoding="utf-8"))  # parses, or the test fails here
    for name, rec in state["stages"].items():
        if rec["status"] == "succeeded":
            check_succeeded(w, name, rec)
    # No endpoint server runs unrecorded. A server spawned by a killed deploy before it was recorded
    # must go away on its own; give it the time a Python process needs to notice.
    deadline = time.monotonic() + 45
    while True:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        recorded = (state["stages"].get("deploy") or {}).get("outputs", {}).get("pid")
        stray = [pid for pid in w.servers() if pid != recorded]
        if not stray or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not stray, f"{context}: endpoint server(s) {stray} run unrecorded (deploy records {recorded})"
    # Nobody trained twice: at most one job folder ever started a trainer, and each one only once.
    jobs = started_jobs(w)
    assert len(jobs) <= 1, f"{context}: {len(jobs)} training jobs started: {[j.name for j in jobs]}"
    for job in jobs:
        events = (job / "events.jsonl").read_text() if (job / "events.jsonl").exists() else ""
        starts = sum(1 for line in events.splitlines() if '"type": "start"' in line)
        assert starts <= 1, f"{context}: job {job.name} started training {starts} times"
    return state


def status_works(w: Workspace) -> dict[str, dict[str, Any]]:
    """`ftctl --json status` (in-process: the same code as the command, without a Python start-up)."""
    from typer.testing import CliRunner

    from ftctl.cli.app import app

    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("FTCTL_")}
    env.update(FAST_ENV)
    result = CliRunner().invoke(app, ["--workspace", str(w.ws), "--json", "status"], env=env)
    assert result.exit_code == 0, f"ftctl status failed: {result.output}{result.exception!r}"
    return {s["name"]: s for s in json.loads(result.stdout)["stages"]}


def crash(
    w: Workspace, stage: str, *args: str, rng: random.Random, span: float, retries: int = 0, **kw: Any
) -> Outcome:
    """One trial: kill inside `stage` after a random delay in [0, span), check the invariants.

    With `retries`, a command that finished before the kill (a fast stage on a fast machine) is run
    again with a shorter span, up to that many times, so that the kill lands."""
    for attempt in range(retries + 1):
        delay = rng.uniform(0, span / 3**attempt)
        outcome = w.kill_during(stage, *args, delay=delay, **kw)
        TRIALS.append(
            {"stage": stage, "args": args, "delay": round(delay, 3), "killed": outcome.killed,
             "in_stage": outcome.killed_in_stage}
        )  # fmt: skip
        if not outcome.killed:
            assert outcome.code == 0, outcome.describe()
        check_invariants(w, f"after killing `ftctl {' '.join(args)}` {delay:.2f}s into {stage}")
        status_works(w)
        if outcome.killed:
            break
    return outcome


def rerun(w: Workspace, stage: str, *args: str) -> Outcome:
    """Re-running the stage completes; the state is consistent afterwards, nothing is stale."""
    done = w.run(*(args or (stage,)))
    state = check_invariants(w, f"after re-running {stage}")
    assert state["stages"][stage]["status"] == "succeeded", done.describe()
    status = status_works(w)
    stale = {name: s["stale_reason"] for name, s in status.items() if s["stale"]}
    assert not stale, f"stale after re-running {stage}: {stale}"
    return done


# --- the cheap stages ------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "trials"), [("auth", 2), ("pick-model", 3), ("check-compute", 2),
                                                ("prepare-data", 3)])  # fmt: skip
def test_kill_inside_a_cheap_stage(w: Workspace, stage: str, trials: int) -> None:
    rng = random.Random(f"crash-{stage}")
    span = max(0.05, 0.9 * w.timings[stage])
    landed = 0
    for trial in range(trials):
        w.restore("prepared")
        # Mostly inside the stage (after its running record); one trial anywhere from process start.
        anywhere = trial == trials - 1
        outcome = crash(
            w, stage, stage, "--force", rng=rng, span=span + (1.0 if anywhere else 0), from_start=anywhere,
            retries=0 if anywhere else 2,
        )  # fmt: skip
        landed += outcome.killed_in_stage
        rerun(w, stage)
        if stage == "prepare-data":
            leftovers = [p.name for p in (w.ws / "data").iterdir() if p.name.endswith(".tmp")]
            assert not leftovers, f"half-written files left in the download dir: {leftovers}"
    if not landed:
        # A stage that ends within the harness's 10 ms polling (pick-model on a quiet machine) can finish
        # before any timed kill: kill it deterministically instead, before its second file commit (the
        # first saves its running record), so every stage still gets a kill inside it.
        landed += _kill_before_commit(w, stage, 2)
    assert landed >= 1, f"no kill landed inside {stage} ({TRIALS[-trials:]})"


def _kill_before_commit(w: Workspace, stage: str, k: int) -> int:
    w.restore("prepared")
    outcome = w.run(stage, "--force", inject=("replace", str(k)), code=None)
    assert outcome.code == -9, f"commit {k} of {stage} was not reached\n{outcome.describe()}"
    TRIALS.append({"stage": stage, "args": ("replace", k), "killed": True, "in_stage": True})
    state = check_invariants(w, f"{stage} killed before its file commit {k}")
    assert state["stages"][stage]["status"] in ("succeeded", "running"), state
    status_works(w)
    rerun(w, stage)
    return 1


def test_kill_at_every_file_commit(w: Workspace) -> None:
    """`ftctl prepare-data --force` killed just before each of its file commits (os.replace), in turn."""
    w.restore("prepared")
    counter = w.logs / "replace-count"
    w.run("prepare-data", "--force", inject=("count", str(counter)))
    commits = int(counter.read_text())
    assert commits >= 4, commits  # state running, 4 splits, state succeeded (each state save >= 1)
    for k in range(1, commits + 1):
        w.restore("prepared")
        outcome = w.run("prepare-data", "--force", inject=("replace", str(k)), code=None)
        assert outcome.code == -9, f"commit {k} of {commits} was not reached\n{outcome.describe()}"
        TRIALS.append({"stage": "prepare-data", "args": ("replace", k), "killed": True, "in_stage": True})
        state = check_invariants(w, f"killed before file commit {k} of {commits}")
        # The stage is either still recorded as before (succeeded, with matching files) or as running.
        assert state["stages"]["prepare-data"]["status"] in ("succeeded", "running"), state
        status_works(w)
        rerun(w, "prepare-data")


# --- submit: the training job is detached and re-attached --------------------------------------


def _job_event(w: Workspace, kind: str) -> bool:
    return any(f'"type": "{kind}"' in p.read_text() for p in (w.ws / "jobs").glob("*/events.jsonl"))


def _wait_jobs_done(w: Workspace, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while w.job_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not w.job_processes(), "the training job still runs"


def _submit_rerun(w: Workspace, killed: Outcome) -> None:
    recorded = w.record("submit").get("outputs", {}).get("job_id")
    done = rerun(w, "submit")
    _wait_jobs_done(w)
    check_invariants(w, "after the submit re-run")
    final = w.record("submit")["outputs"]
    jobs = started_jobs(w)
    assert [j.name for j in jobs] == [final["job_id"]], (jobs, final["job_id"])
    if recorded:  # the killed attempt had recorded its job: the re-run followed that same job
        assert final["job_id"] == recorded
        assert f"re-attaching to job {recorded}" in done.stderr, done.describe()


def test_kill_inside_submit(w: Workspace) -> None:
    rng = random.Random("crash-submit")
    # A. Killed in its first seconds (parameters, the job's folder, spawning it); the re-run is killed
    #    again while the job trains; the third run follows the same job to its end.
    w.restore("prepared")
    crash(w, "submit", "submit", rng=rng, span=3.0)
    job_id = w.record("submit").get("outputs", {}).get("job_id")
    killed = crash(
        w, "submit", "submit", rng=rng, span=1.0,
        after=lambda err: _job_event(w, "start") and ("re-attaching to job" in err or "started (pid" in err),
    )  # fmt: skip
    assert killed.killed_in_stage, killed.describe()
    if job_id:
        assert w.record("submit")["outputs"]["job_id"] == job_id, "the re-run started another job"
    assert w.job_processes(), "killing ftctl must not kill its (detached) training job"
    _submit_rerun(w, killed)
    # B. Killed exactly after the job process was spawned, before anything else happened.
    w.restore("prepared")
    killed = w.run("submit", inject=("spawn", "-"), code=None)
    assert killed.code == -9, killed.describe()
    TRIALS.append({"stage": "submit", "args": ("spawn",), "killed": True, "in_stage": True})
    check_invariants(w, "after killing submit right after the job was spawned")
    assert w.record("submit")["outputs"].get("job_id"), "the spawned job was not recorded"
    _submit_rerun(w, killed)


# --- register, deploy, score, teardown -------------------------------------------------------------


def test_kill_inside_register(trained_w: Workspace) -> None:
    w = trained_w
    rng = random.Random("crash-register")
    for trial in range(2):
        if trial:
            w.restore("session-trained")
        crash(w, "register", "register", "--force", rng=rng, span=3.0, retries=2)
        rerun(w, "register")


def _check_endpoint(w: Workspace) -> dict[str, Any]:
    out = w.record("deploy")["outputs"]
    assert w.servers() == [out["pid"]]
    assert port_is_open(out["host"], out["port"])
    addresses = listening_addresses(out["pid"])
    assert addresses and all(addr == "127.0.0.1" for addr, _ in addresses), addresses
    return out


def test_kill_inside_deploy_score_teardown(trained_w: Workspace) -> None:
    w = trained_w
    rng = random.Random("crash-deploy")
    # 1. Early in deploy: resolving the model, writing the key, binding the socket.
    crash(w, "deploy", "deploy", rng=rng, span=3.0)
    rerun(w, "deploy")
    first = _check_endpoint(w)
    # 2. A forced redeploy killed right after spawning the new server, before it was recorded: the old
    #    server is replaced, the new one must not survive unrecorded.
    killed = w.run("deploy", "--force", inject=("spawn", "-"), code=None)
    assert killed.code == -9, killed.describe()
    TRIALS.append({"stage": "deploy", "args": ("spawn",), "killed": True, "in_stage": True})
    check_invariants(w, "after killing deploy right after the server was spawned")
    assert first["pid"] not in w.servers(), "the replaced endpoint still runs"
    # 3. The re-run killed while its (recorded) server loads the model: the next one re-attaches to it.
    attempt = w.record("deploy")["attempt"]
    killed = crash(
        w, "deploy", "deploy", rng=rng, span=0.5,
        after=lambda _err: w.record("deploy").get("attempt", 0) > attempt
        and bool(w.record("deploy").get("outputs", {}).get("pid")),
    )  # fmt: skip
    recorded = w.record("deploy")["outputs"].get("pid")
    done = rerun(w, "deploy")
    live = _check_endpoint(w)
    if killed.killed and recorded:
        assert live["pid"] == recorded and "re-attaching to endpoint" in done.stderr, done.describe()

    # score, twice.
    landed = 0
    for _ in range(2):
        landed += crash(w, "score", "score", rng=rng, span=1.0, retries=3).killed_in_stage
        rerun(w, "score")
        _check_endpoint(w)
    if not landed:  # both ended before the timed kill (a quick reply): kill one before a file commit
        _kill_before_commit_live(w, "score", "score")
        _check_endpoint(w)

    # teardown: once with the server up, once when it is already down.
    landed = 0
    for _ in range(2):
        landed += crash(w, "teardown", "teardown", rng=rng, span=1.5, retries=3).killed_in_stage
        rerun(w, "teardown")
        assert w.servers() == []
        assert not port_is_open(live["host"], live["port"])
    if not landed:  # as for score, with the endpoint up again
        w.run("run", "--from", "deploy", "--to", "score")
        _check_endpoint(w)
        _kill_before_commit_live(w, "teardown", "teardown")
        assert w.servers() == []


def _kill_before_commit_live(w: Workspace, stage: str, *args: str) -> None:
    """`ftctl args` SIGKILLed just before its second file commit (the first saves its running record):
    a kill inside `stage` however quickly it ends; then the invariants, status, and a re-run."""
    outcome = w.run(*args, inject=("replace", "2"), code=None)
    assert outcome.code == -9, f"the second commit of {stage} was not reached\n{outcome.describe()}"
    TRIALS.append({"stage": stage, "args": ("replace", 2), "killed": True, "in_stage": True})
    check_invariants(w, f"{stage} killed before its file commit 2")
    status_works(w)
    rerun(w, stage)


@pytest.mark.summary
def test_summary() -> None:
    """At least 20 kills landed, in every stage."""
    killed = [t for t in TRIALS if t["killed"]]
    stages = {t["stage"] for t in killed}
    per_stage = {s: sum(1 for t in killed if t["stage"] == s) for s in sorted(stages)}
    print(f"\n{len(TRIALS)} crash trials, {len(killed)} kills: {per_stage}")
    if len(TRIALS) < 25:  # a subset of the module was selected (-k): nothing to sum up
        pytest.skip("run the whole module for the summary")
    assert len(killed) >= 20, TRIALS
    assert stages == {"auth", "pick-model", "check-compute", "prepare-data", "submit", "register",
                      "deploy", "score", "teardown"}, TRIALS  # fmt: skip
