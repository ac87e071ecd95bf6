"""What the deploy stage asks of a starting endpoint (standard library only): is the port open, is the
model loaded."""

from __future__ import annotations

import errno
import json
import socket
import time
from typing import Any

from ftctl.errors import StageFailed


def port_is_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


READY_POLL_MAX_S = 0.25  # a local GET: a deploy waits at most this long past the model's load
UNREACHABLE_TRIES = 10  # "network unreachable" this many times in a row (about 2 s): no route will come


def _no_route(reason: Any) -> bool:
    """A connection that failed for want of any route (the loopback interface down), not for want of a
    listener: waiting longer does not help."""
    return isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL)


def wait_until_ready(url: str, timeout_s: float, proc: Any = None) -> None:
    """Poll `<url>/health/ready` until it answers 200.

    `url` is the endpoint's base URL (http://127.0.0.1:PORT; a URL already ending in /health/ready
    or /score is accepted too). If `proc` (a subprocess.Popen) exits first, or the server reports that
    the model failed to load, or `timeout_s` passes, raises StageFailed. Proxies are bypassed.
    """
    import urllib.error  # here, not at the top: `ftctl status` asks only port_is_open (~35 ms of imports)
    import urllib.request

    base = url.rstrip("/")
    for suffix in ("/health/ready", "/score"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    ready_url = base + "/health/ready"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    delay = 0.1
    last = "no answer yet"
    unreachable = 0  # consecutive tries that found no route at all
    while True:
        if proc is not None and proc.poll() is not None:
            raise StageFailed(
                f"the scoring server exited with code {proc.returncode} before it was ready ({last})",
                hint="its log (stderr) says why",
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StageFailed(
                f"the scoring server at {base} was not ready after {timeout_s:g} s ({last})",
                hint="loading a large model on CPU takes a while; raise the deploy timeout",
            )
        try:
            with opener.open(ready_url, timeout=max(0.1, min(2.0, remaining))) as response:
                if response.status == 200:
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            try:
                payload = json.loads(exc.read() or b"{}")
            except (ValueError, OSError):
                payload = {}
            if isinstance(payload, dict) and payload.get("status") == "failed":
                raise StageFailed(
                    f"the scoring server could not load the model: {payload.get('error')}"
                ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            last = f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
            unreachable = unreachable + 1 if _no_route(reason) else 0
            if unreachable >= UNREACHABLE_TRIES:
                raise StageFailed(
                    f"cannot connect to the scoring server at {base}: {last}; the loopback interface is "
                    "down (a network namespace without it, e.g. `unshare -n`)",
                    hint="bring it up (`ip link set lo up`) where the server runs",
                ) from None
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 1.5, READY_POLL_MAX_S)


def key_accepted(url: str, key: str, timeout_s: float = 2.0) -> bool:
    """Whether the endpoint at `url` (its base URL) accepts `key` (GET /v1/models answers 200)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"Bearer {key}"}
    request = urllib.request.Request(url.rstrip("/") + "/v1/models", headers=headers)
    try:
        with opener.open(request, timeout=timeout_s) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False
