"""The cost guard: an endpoint's time to live.

`deploy.ttl` (or `ftctl deploy --ttl 4h`) gives the endpoint an expiry, recorded by deploy as
`expires_at`. Every command warns about an endpoint past it, `ftctl status` shows how long the endpoint
has been up, `ftctl teardown --expired` tears down only an expired one (safe in cron), and the local
endpoint server stops itself at expiry. Standard library only: this runs on every command.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL_S = 365 * 86400


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "4h", "2d" (or "1.5h"); ValueError for anything else."""
    found = _DURATION.match(text)
    if not found:
        raise ValueError(f"{text!r} is not a duration like 30m, 4h or 2d")
    seconds = float(found.group(1)) * _SECONDS[found.group(2)]
    if not 0 < seconds <= MAX_TTL_S:
        raise ValueError(f"{text!r} is out of range (more than 0, at most 365d)")
    return seconds


def expires_at(ttl: str | None, now: datetime | None = None) -> str | None:
    """The ISO time an endpoint deployed now with `ttl` expires (None without a ttl)."""
    if not ttl:
        return None
    start = now or datetime.now(timezone.utc)
    return (start + timedelta(seconds=parse_duration(ttl))).isoformat(timespec="seconds")


def human(seconds: float) -> str:
    seconds = int(abs(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            rest = seconds % size // {"d": 3600, "h": 60, "m": 1}[unit]
            small = {"d": "h", "h": "m", "m": "s"}[unit]
            return f"{seconds // size}{unit}" + (f" {rest}{small}" if rest else "")
    return f"{seconds}s"


def endpoint_record(state: dict[str, Any]) -> dict[str, Any] | None:
    """deploy's outputs when its endpoint was deployed and not torn down since (None otherwise)."""
    stages = state.get("stages") or {}
    deploy, teardown = stages.get("deploy") or {}, stages.get("teardown") or {}
    if deploy.get("status") != "succeeded" or not deploy.get("outputs"):
        return None
    if teardown.get("status") == "succeeded" and (teardown.get("ended_at") or "") >= (
        deploy.get("ended_at") or ""
    ):
        return None
    return dict(deploy["outputs"], deployed_at=deploy.get("ended_at"))


def expired(state: dict[str, Any], now: datetime | None = None) -> dict[str, Any] | None:
    """The live endpoint's record when it is past its expiry (None otherwise)."""
    record = endpoint_record(state)
    if not record or not record.get("expires_at"):
        return None
    moment = now or datetime.now(timezone.utc)
    return record if datetime.fromisoformat(record["expires_at"]) <= moment else None


def uptime(record: dict[str, Any], now: datetime | None = None) -> str:
    """ "up 2h 5m, expires in 1h 55m" (or "expired 10m ago")."""
    moment = now or datetime.now(timezone.utc)
    parts = []
    if record.get("deployed_at"):
        parts.append(f"up {human((moment - datetime.fromisoformat(record['deployed_at'])).total_seconds())}")
    if record.get("expires_at"):
        left = (datetime.fromisoformat(record["expires_at"]) - moment).total_seconds()
        parts.append(f"expires in {human(left)}" if left > 0 else f"expired {human(left)} ago")
    return ", ".join(parts)
