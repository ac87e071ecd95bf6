"""deploy inside a network namespace whose loopback interface is down (`unshare -n` without
`ip link set lo up`): the server binds 127.0.0.1 and loads its model, but no connection to it can open.
Found running the quickstart under `unshare -n`: deploy waited out its whole ready timeout (180 s) and
blamed a slow model load. It must fail within seconds and name the loopback interface."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from ftctl.backends.local.serving import probe as server
from ftctl.errors import StageFailed


def test_an_unreachable_loopback_fails_fast_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def unreachable(self, url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", unreachable)
    started = time.monotonic()
    with pytest.raises(StageFailed) as failed:
        server.wait_until_ready("http://127.0.0.1:9", timeout_s=180)
    assert time.monotonic() - started < 10
    assert "loopback" in failed.value.message and "Network is unreachable" in failed.value.message
    assert "ip link set lo up" in (failed.value.hint or "")
    assert 2 <= len(calls) <= 20  # a few tries, not one: a transient error is not fatal


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_in_a_real_namespace_without_loopback() -> None:
    """The same, for real, where this machine lets us create a network namespace."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here")
    code = (
        "import time\nfrom ftctl.backends.local.serving import probe as server\n"
        "from ftctl.errors import StageFailed\n"
        "t = time.monotonic()\n"
        "try:\n    server.wait_until_ready('http://127.0.0.1:9', timeout_s=180)\n"
        "except StageFailed as e:\n    print(round(time.monotonic() - t), e.message)\n"
    )
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    seconds, _, message = done.stdout.strip().partition(" ")
    assert int(seconds) < 10 and "loopback" in message, done.stdout + done.stderr
