"""The whole local pipeline for real, on the user's own data: a ShareGPT file (the shipped sample's
conversations) is converted and divided, then train, register, serve over HTTP, score, tear down."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from ftctl.backends.local.serving.probe import port_is_open
from ftctl.pipeline import ORDER
from harness import FAST, Ftctl


@pytest.fixture
def ftctl(ftctl: Ftctl) -> Ftctl:
    """The same fresh workspace, with the suite's fast training profile (harness.FAST), on a ShareGPT
    file of the sample's conversations (the one training of this test: no more than the sample costs)."""
    from ftctl.data.sample import iter_sample_conversations

    speaker = {"system": "system", "user": "human", "assistant": "gpt"}
    records = [
        {"conversations": [{"from": speaker[m["role"]], "value": m["content"]} for m in row["messages"]]}
        for split in ("train_sft", "test_sft")
        for row in iter_sample_conversations(split)
    ]
    (ftctl.root / "my-chats.json").write_text(json.dumps(records), encoding="utf-8")
    return Ftctl(ftctl.root, config=FAST + "data:\n  dataset: my-chats.json\n")


def _post(url: str, body: dict, key: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_nine_local_stages_end_to_end(ftctl) -> None:
    # The user's file, converted and divided: 460 conversations, 46 held out.
    prepared = ftctl("run", "--to", "prepare-data")
    assert "my-chats.json: 460 records, 0 dropped: train_sft 414, test_sft 46" in prepared.stderr
    assert "format: ShareGPT (conversations), detected at my-chats.json:1" in prepared.stderr
    # Start training detached, then let `run` re-attach to the same job.
    ftctl("submit", "--no-wait")
    submit = ftctl.state()["stages"]["submit"]
    assert submit["status"] == "running"
    job_id = submit["outputs"]["job_id"]

    result = ftctl("run")
    assert f"re-attaching to job {job_id}" in result.stderr
    assert "output: " in result.stdout and 'raw response: {"output":' in result.stdout
    status = ftctl.status()
    assert status["score"]["outputs"]["split"] == "test_sft"  # the file has no test_gen split
    # Every stage succeeded; deploy's endpoint is down again, since `run` ends with teardown.
    wanted = ["down" if name == "deploy" else "succeeded" for name in ORDER]
    assert [status[name]["status"] for name in ORDER] == wanted
    assert [p.name for p in (ftctl.workspace / "jobs").iterdir()] == [job_id]
    outputs = status["submit"]["outputs"]
    assert outputs["train_loss"] > 0 and outputs["eval_loss"] > 0
    assert status["register"]["outputs"]["model_uri"].startswith(
        "models:/ftctl-tiny-phi3-chat-ultrachat-200k/"
    )

    # The endpoint is down after teardown: score refuses and names the command to run.
    deploy = status["deploy"]["outputs"]
    assert not port_is_open(deploy["host"], deploy["port"])
    refused = ftctl("score", code=2)
    assert "`ftctl deploy`" in refused.stderr

    # Bring it back, score through ftctl and over plain HTTP.
    ftctl("deploy")
    deploy = ftctl.state()["stages"]["deploy"]["outputs"]
    scored = ftctl("score")
    assert scored.stdout.count("output: ") == 1
    key = (ftctl.workspace / "secrets" / f"{deploy['endpoint_name']}.key").read_text().strip()
    body = {
        "input_data": {
            "input_string": [[{"role": "user", "content": "What is 2 plus 3?"}]],
            "parameters": {"do_sample": False, "max_new_tokens": 16},
        },
        "params": {},
    }
    code, text = _post(deploy["scoring_uri"], body, key)
    assert code == 200 and isinstance(json.loads(text)["output"], str)
    assert _post(deploy["scoring_uri"], body, "wrong")[0] == 401
    assert _post(deploy["scoring_uri"], body, None)[0] == 401
    state_text = (ftctl.workspace / "state.json").read_text()
    assert key not in state_text and key not in scored.stdout + scored.stderr

    # Re-running deploy while it is up re-attaches instead of starting a second server.
    again = ftctl("deploy")
    assert "up to date" in again.stderr
    assert ftctl.state()["stages"]["deploy"]["outputs"]["pid"] == deploy["pid"]

    ftctl("teardown")
    assert not port_is_open(deploy["host"], deploy["port"])
    ftctl("teardown")  # idempotent

    # Nothing changed: every stage is up to date and no training happens.
    rerun = ftctl("run")
    for name in ORDER:
        assert f"- {name}: up to date" in rerun.stderr
    assert len(list((ftctl.workspace / "jobs").iterdir())) == 1

    # A new learning rate makes submit and everything downstream stale, with the reason.
    stale = {s["name"]: s for s in ftctl.json("--set", "finetune.learning_rate=1e-4", "status")["stages"]}
    assert [name for name in ORDER if stale[name]["stale"]] == [
        "submit",
        "register",
        "deploy",
        "score",
        "teardown",
    ]
    assert stale["submit"]["stale_reason"] == "finetune.learning_rate changed (0.002 -> 0.0001)"
    assert (
        stale["register"]["stale_reason"]
        == "submit is stale: finetune.learning_rate changed (0.002 -> 0.0001)"
    )
