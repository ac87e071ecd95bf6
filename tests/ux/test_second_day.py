"""The second day (issue 17): what a user comes back to. The endpoint keeps its address across
re-deploys, teardown is safe to run from a script's exit trap, and the key changes only on request."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

SAMPLE = {"input_data": {"input_string": [[{"role": "user", "content": "Hi"}]], "parameters": {}}}


def score(uri: str, key: str) -> int:
    """The HTTP status a client holding `uri` and `key` gets for a small scoring request."""
    request = urllib.request.Request(
        uri,
        data=json.dumps({**SAMPLE, "parameters": {"max_new_tokens": 4}}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_teardown_with_nothing_deployed_exits_0_twice(empty: Any) -> None:
    for _ in range(2):
        result = empty("teardown")
        assert "nothing to tear down" in result.stderr
        assert "Traceback" not in result.stderr
    assert empty.json("teardown")["status"] == "nothing deployed"


def test_teardown_twice_after_a_deploy_exits_0(scratch: Any) -> None:
    scratch("deploy")
    scratch("teardown")
    second = scratch("teardown")
    assert "already down" in second.stderr + second.stdout or "not running" in second.stderr


def test_a_redeploy_keeps_the_name_url_and_key(scratch: Any) -> None:
    scratch("deploy")
    before = scratch.json("credentials")
    assert score(before["scoring_uri"], before["primary_key"]) == 200
    # a second training run, registered as version 2 of the model
    again = ("--set", "finetune.max_steps=4", "--set", "register.gate=off")
    scratch("submit", *again)
    scratch("register", *again)
    redeployed = scratch("deploy", *again)
    assert "same URL and key" in redeployed.stderr
    after = scratch.json("credentials")
    try:
        assert after["model"].endswith(":2") and before["model"].endswith(":1")  # the new version...
        for field in ("endpoint_name", "scoring_uri", "openai_base_url", "primary_key"):
            assert after[field] == before[field], field  # ...at the same address, with the same key
        assert score(before["scoring_uri"], before["primary_key"]) == 200  # the old client still works
        scratch("deploy", "--force", *again)
        assert scratch.json("credentials")["primary_key"] == before["primary_key"]
        # a new key only on request; the old one is refused at once, the new one works
        rotated = scratch.json("credentials", "--rotate")
        assert rotated["primary_key"] != before["primary_key"]
        assert rotated["scoring_uri"] == before["scoring_uri"]
        assert score(before["scoring_uri"], before["primary_key"]) == 401
        assert score(rotated["scoring_uri"], rotated["primary_key"]) == 200
        assert rotated["primary_key"] not in (scratch.workspace / "state.json").read_text()
    finally:
        scratch("teardown")
    # torn down: its key is gone, and the next deploy is a new endpoint with a new key
    assert not list((scratch.workspace / "secrets").glob("*.key"))


# --- settings that stick ---------------------------------------------------------------------------

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "src" / "ftctl" / "resources" / "ultrachat_sample"


def test_a_stage_option_is_a_setting_that_sticks(empty: Any) -> None:
    mydata = empty.root / "mydata"
    shutil.copytree(SAMPLE_DATA, mydata)
    empty("auth")
    first = empty("prepare-data", "--dataset", str(mydata))
    assert f'data.dataset: default -> "{mydata}"' in first.stderr  # said when it changes
    stages = {s["name"]: s for s in empty.json("status")["stages"]}
    assert not stages["prepare-data"]["stale"], stages["prepare-data"]["stale_reason"]
    again = empty("run", "--to", "prepare-data")  # does not put the sample back
    assert "- prepare-data: up to date" in again.stderr
    origin = {row["key"]: row for row in empty.json("config", "show")["settings"]}["data.dataset"]
    assert origin["value"] == str(mydata) and origin["origin"].startswith("workspace (")
    assert "data.dataset:" not in empty("prepare-data", "--dataset", str(mydata)).stderr  # unchanged
    # a one-off --set is not kept; unset goes back to the default
    empty("config", "unset", "data.dataset")
    assert "data.dataset changed" in empty.json("status")["stages"][3]["stale_reason"]


def test_config_show_names_each_origin(empty: Any, monkeypatch: Any) -> None:
    from typer.testing import CliRunner

    from ftctl.cli.app import app

    empty("config", "set", "finetune.learning_rate", "1e-4")
    monkeypatch.setenv("FTCTL_DATA__SPLIT_PC", "50")
    result = CliRunner().invoke(
        app, ["--workspace", str(empty.workspace), "--config", str(empty.config), "--json", "--set",
              "score.seed=3", "config", "show"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    origins = {row["key"]: (row["value"], row["origin"]) for row in json.loads(result.stdout)["settings"]}
    layer = empty.workspace / "config.yaml"
    assert origins["finetune.learning_rate"] == (0.0001, f"workspace ({layer}:6)")
    assert origins["finetune.max_steps"] == (8, f"{empty.config}:2")
    assert origins["data.split_pc"] == (50.0, "env FTCTL_DATA__SPLIT_PC")
    assert origins["score.seed"] == (3, "--set")
    assert origins["deploy.port"] == (0, "default")


def test_config_set_checks_like_set_and_writes_nothing_it_refuses(empty: Any) -> None:
    typo = empty("config", "set", "finetune.learnig_rate", "1e-4", code=2)
    assert "unknown key (did you mean finetune.learning_rate?)" in typo.stderr
    bad = empty("config", "set", "finetune.learning_rate", "2", code=2)
    assert "finetune.learning_rate (from config set)" in bad.stderr
    assert "less than or equal to 1" in bad.stderr
    assert "Traceback" not in typo.stderr + bad.stderr
    assert not (empty.workspace / "config.yaml").exists()
    empty("config", "set", "deploy.port", "8123")
    assert "port: 8123" in (empty.workspace / "config.yaml").read_text()
    assert "nothing to unset" in empty("config", "unset", "deploy.ttl").stderr


def test_init_writes_a_commented_config_from_the_shipped_ones(empty: Any, monkeypatch: Any) -> None:
    from ftctl.cli.config_commands import shipped_configs

    monkeypatch.chdir(empty.root)
    shipped = shipped_configs()
    assert "ftctl" in str(shipped["azureml-phi4-ultrachat"].parent.parent.parent.name)  # package data
    empty("init")
    written = (empty.root / "ftctl.yaml").read_text()
    assert written.startswith("# Written by `ftctl init` from local-quickstart")
    assert "backend: local" in written
    assert "exists already" in empty("init", code=2).stderr
    empty("init", "--backend", "azureml", "-o", "az.yaml")
    azure = (empty.root / "az.yaml").read_text()
    assert "name: Phi-4" in azure and "backend: azureml" in azure
    assert (
        "is a local config, not azureml"
        in empty("init", "--backend", "azureml", "--from", "local-quickstart", "-o", "x.yaml", code=2).stderr
    )


def test_azureml_on_local_defaults_is_refused_with_what_to_set(ftctl: Any) -> None:
    result = ftctl("--backend", "azureml", "run", "--dry-run", code=2)
    assert "model.name is 'ftctl/tiny-phi3-chat' (default)" in result.stderr
    assert "compute.name is 'local' (default)" in result.stderr
    assert "ftctl init --backend azureml" in result.stderr
    assert not (ftctl.workspace / "state.json").exists()


def test_shipped_configs_are_the_package_data(tmp_path: Path) -> None:
    from ftctl.cli.config_commands import shipped_configs

    root = Path(__file__).resolve().parents[2]
    checkout = {p.stem: p.read_text() for p in (root / "configs").glob("*.yaml")}
    assert {name: path.read_text() for name, path in shipped_configs().items()} == checkout


def test_a_no_wait_job_that_finished_shows_its_outcome(scratch: Any) -> None:
    """`submit --no-wait` leaves submit `running` with the job's id; the job then ends with nobody
    following it. `status` says how it ended (not `interrupted`), and `ftctl submit` records it."""
    state = json.loads((scratch.workspace / "state.json").read_text())
    state["stages"]["submit"]["status"] = "running"  # as --no-wait leaves it
    (scratch.workspace / "state.json").write_text(json.dumps(state))
    submit = {s["name"]: s for s in scratch.json("status")["stages"]}["submit"]
    assert submit["status"] == "completed", submit
    assert "completed; `ftctl submit` records the result" in submit["note"]
    scratch("submit")
    assert {s["name"]: s for s in scratch.json("status")["stages"]}["submit"]["status"] == "succeeded"


# --- output that fits ------------------------------------------------------------------------------

FAILURE = (
    "the endpoint answered HTTP 503 while the model was still loading after the deploy had reported it "
    "ready, which points at a server restarted behind ftctl's back"
)


def in_80_columns(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    """What `argv` draws on a pseudo-terminal 80 columns wide (as a tmux pane of that size)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL, env=env, cwd=cwd
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the command exited and the terminal closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_status_fits_80_columns_and_shows_messages_not_class_names(scratch: Any) -> None:
    import sys

    state = json.loads((scratch.workspace / "state.json").read_text())
    state["stages"]["score"].update(status="failed", error={"type": "StageFailed", "message": FAILURE})
    (scratch.workspace / "state.json").write_text(json.dumps(state))
    argv = [sys.executable, "-m", "ftctl", "--set", "data.split_pc=50", "status"]  # long stale reasons
    out = in_80_columns(argv, scratch.env(), scratch.root)
    # every line but the workspace's path (as long as the machine's temporary folder makes it)
    assert all(len(line) <= 80 for line in out.splitlines()[1:]), out
    assert "StageFailed" not in out and "stale: data.split_pc changed" in out
    cell = next(line for line in out.splitlines() if line.startswith("score ")).split("  ")[-1].strip()
    shown = cell.removesuffix("…")
    assert cell.endswith("…") and FAILURE.startswith(shown) and FAILURE[len(shown)] == " ", cell  # at a word
    assert "ftctl status STAGE" in out
    assert FAILURE in scratch("status").stdout  # piped: in full
    detail = scratch("status", "score").stdout
    assert f"error: {FAILURE}" in detail and "StageFailed" not in detail
    assert FAILURE in scratch("status", "--wide").stdout
    assert scratch.json("status", "submit")["name"] == "submit"


def test_the_demo_model_note_is_shown_once_per_workspace(empty: Any) -> None:
    first = empty("run", "--to", "pick-model")
    assert first.stderr.count("~1M-parameter demo model") == 1
    assert "~1M-parameter demo model" not in empty("pick-model", "--force").stderr


# --- the OpenAI route: stop (LangChain sends it), and no promise it cannot keep ---------------------


def test_stop_filter_holds_back_what_may_begin_a_stop_sequence() -> None:
    from ftctl.backends.local.openai_compat import StopFilter

    f = StopFilter(["\nUser:", "###"])
    sent = [f.feed(piece) for piece in ("Hello", " there\n", "Us", "er: more", " ignored")]
    assert sent == ["Hello", " there", "", "", ""] and f.hit and f.finish() == ""
    g = StopFilter(["###"])
    assert [g.feed("a#"), g.feed("#b")] == ["a", "##b"] and not g.hit and g.finish() == ""
    h = StopFilter(["###"])
    assert h.feed("tail #") == "tail " and h.finish() == "#"  # ended without the stop: all of it


def test_the_openai_route_applies_stop_and_refuses_json_mode() -> None:
    from fastapi.testclient import TestClient

    from ftctl.backends.local.serving.app import ServerOptions, create_app

    tiny = SAMPLE_DATA.parent / "tiny-phi3"
    key = {"Authorization": "Bearer second-day-key"}
    app = create_app(tiny, key="second-day-key", options=ServerOptions(request_timeout_s=30))
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 24, "temperature": 0}
    with TestClient(app) as client:
        while client.get("/health/ready").status_code != 200:
            pass
        full = client.post("/v1/chat/completions", json=body, headers=key).json()["choices"][0]
        text = full["message"]["content"]
        assert len(text) >= 4, text
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        cut = client.post("/v1/chat/completions", json={**body, "stop": [stop]}, headers=key).json()
        assert cut["choices"][0]["message"]["content"] == text[: text.index(stop)]
        assert cut["choices"][0]["finish_reason"] == "stop"
        streamed = client.post(
            "/v1/chat/completions", json={**body, "stop": stop, "stream": True}, headers=key
        )
        chunks = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
        assert (
            "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == text[: text.index(stop)]
        )
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        json_mode = {**body, "response_format": {"type": "json_object"}}
        refused = client.post("/v1/chat/completions", json=json_mode, headers=key)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "response_format"
        plain = {**body, "response_format": {"type": "text"}}
        assert client.post("/v1/chat/completions", json=plain, headers=key).status_code == 200


METRICS_PROBE = """
import sys, time
from ftctl.cli.app import app
started = time.perf_counter()
try:
    app(["metrics"], prog_name="ftctl")
except SystemExit as exc:
    assert not exc.code, exc.code
elapsed = time.perf_counter() - started
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"mlflow", "torch", "transformers", "pandas"})
print(f"PROBE {elapsed:.3f} {','.join(heavy) or '-'}", file=sys.stderr)
"""


def test_metrics_on_a_finished_local_job_needs_no_mlflow(scratch: Any) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", METRICS_PROBE], env=scratch.env(), cwd=scratch.root,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "train_loss" in done.stdout or "TRAIN" in done.stdout.upper()
    elapsed, heavy = done.stderr.rsplit("PROBE ", 1)[1].split()
    assert heavy == "-", f"metrics imported {heavy}"
    assert float(elapsed) < 1.0, elapsed  # well under a second: ~0.05 s quiet; MLflow's import is ~3 s


def test_evaluate_shows_progress_per_phase(scratch: Any) -> None:
    err = scratch("evaluate", "--samples", "1").stderr
    phases = ["base: held-out loss", "base: loss ", "fine-tuned: held-out loss", "fine-tuned: 1 generations"]
    at = [err.find(phase) for phase in phases]
    assert -1 not in at and at == sorted(at), err  # each phase said, in order, as it starts


# --- an honest install ------------------------------------------------------------------------------


def test_the_readme_installs_a_cpu_torch_where_there_is_no_gpu() -> None:
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    quickstart = readme[
        readme.index("## Quickstart") : readme.index("\n## ", readme.index("## Quickstart") + 1)
    ]
    ci_pin = next(
        line for line in (root / ".ci" / "run").read_text().splitlines() if "install -q torch" in line
    )
    version = ci_pin.split("torch==")[1].split()[0]
    cpu = f"pip install torch=={version} --index-url https://download.pytorch.org/whl/cpu"
    assert cpu in quickstart  # PyTorch's own CPU wheel index: no CUDA libraries pulled
    assert f"pip install torch=={version}," in quickstart  # the plain one, for GPU machines
    # every plain install line in the README names the CPU index (or says where the GPU one is)
    for line in readme.splitlines():
        if line.startswith("pip install torch"):
            assert "--index-url https://download.pytorch.org/whl/cpu" in line, line
    # times say the machine and its load
    assert "2 CPU cores" in quickstart and "load average" in quickstart
