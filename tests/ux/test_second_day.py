"""The second day (issue 17): what a user comes back to. The endpoint keeps its address across
re-deploys, teardown is safe to run from a script's exit trap, and the key changes only on request."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
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
