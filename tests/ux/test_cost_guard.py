"""The cost guard: `deploy --ttl` records an expiry; every command warns past it; `status` shows uptime,
expiry and instance type; `teardown --expired` tears down only an expired endpoint (cron-safe); the local
server stops itself at expiry."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ftctl.ttl import expires_at, human, parse_duration, uptime


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def _age_expiry(ws, seconds_ago: float) -> None:
    """Move the recorded expiry into the past, as if the endpoint had been up that long."""
    state_file = ws.workspace / "state.json"
    state = json.loads(state_file.read_text())
    past = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    state["stages"]["deploy"]["outputs"]["expires_at"] = past.isoformat(timespec="seconds")
    state_file.write_text(json.dumps(state))


def test_durations() -> None:
    assert parse_duration("4h") == 14400 and parse_duration("1.5h") == 5400 and parse_duration("30s") == 30
    for bad in ("4", "4 weeks", "-1h", "0m", "400d", "", "1e9h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert expires_at("2d", start) == "2026-01-03T00:00:00+00:00" and expires_at(None) is None
    record = {"deployed_at": start.isoformat(), "expires_at": expires_at("4h", start)}
    assert uptime(record, start + timedelta(minutes=65)) == "up 1h 5m, expires in 2h 55m"
    assert uptime(record, start + timedelta(hours=5)) == "up 5h, expired 1h ago"
    assert human(59) == "59s"


def test_ttl_warns_tears_down_when_expired_and_is_cron_safe(scratch) -> None:
    # Nothing deployed: --expired is a no-op (exit 0), as cron needs.
    assert "nothing to tear down" in scratch("teardown", "--expired").stderr
    scratch("deploy", "--ttl", "4h")
    outputs = scratch.json("status")["stages"][6]["outputs"]
    assert outputs["expires_at"] and outputs["instance_type"] == "cpu"
    shown = scratch("status").stdout
    assert "up " in shown and ("expires in 3h 59m" in shown or "expires in 4h" in shown)
    # Not expired yet: --expired leaves it up, and no command warns.
    assert "nothing to tear down" in scratch("teardown", "--expired").stderr
    assert "past its expiry" not in scratch("status").stderr
    # Past its expiry: every command warns; teardown --expired tears it down.
    _age_expiry(scratch, 60)
    for args in (("status",), ("metrics",), ("credentials",)):
        assert "is past its expiry (up " in scratch(*args).stderr, args
    done = scratch("teardown", "--expired")
    assert "stopped" in done.stderr and "past its expiry" in done.stderr
    assert "past its expiry" not in scratch("status").stderr
    # A changed ttl alone does not make deploy stale.
    assert not scratch.json("--set", "deploy.ttl=1d", "status")["stages"][6]["stale"]


def test_the_local_server_stops_itself_at_expiry(scratch) -> None:
    scratch("deploy", "--ttl", "20s")
    pid = scratch.json("status")["stages"][6]["outputs"]["pid"]
    deadline = time.monotonic() + 180
    while _pid_running(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _pid_running(pid), "the endpoint outlived its ttl"
    stages = {s["name"]: s for s in scratch.json("status")["stages"]}
    assert stages["deploy"]["status"] == "down"
    log = Path(stages["deploy"]["outputs"]["log"]).read_text()
    assert "reached its expiry" in log
