"""A copied or moved workspace (issue 16): a copy never acts on what the original runs, a move keeps
working and writes nothing under the old path. Both failed on the code before (the copy's teardown
stopped the original's endpoint; a moved workspace trained and registered into the old path).

One trained and deployed workspace for the module; every case works on copies or moves of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import FAST_ENV, base_env, kill_pids, live_pids

pytestmark = pytest.mark.slow


def ftctl(root: Path, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "ftctl", *args],
        cwd=root, capture_output=True, text=True, timeout=600, env=base_env(FAST_ENV),
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if code is not None:
        assert done.returncode == code, f"ftctl {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return done


def outputs(root: Path, stage: str) -> dict:
    return json.loads((root / ".ftctl" / "state.json").read_text())["stages"][stage]["outputs"]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("original")
    ftctl(root, "run", "--to", "deploy")
    yield root
    ftctl(root, "teardown", code=None)
    kill_pids(live_pids("ftctl.backends.local.server", str(root)))


def test_a_copy_leaves_the_original_endpoint_alone(deployed: Path, tmp_path: Path) -> None:
    url = outputs(deployed, "deploy")["url"]
    copy = tmp_path / "copy"
    shutil.copytree(deployed, copy, symlinks=True)
    status = ftctl(copy, "status", "--json")
    assert "is a copy of" in status.stderr
    stages = {s["name"]: s for s in json.loads(status.stdout)["stages"]}
    assert stages["deploy"]["status"] == "pending" and stages["submit"]["status"] == "succeeded"
    ftctl(copy, "teardown", code=None)
    ftctl(copy, "reset", "--all")
    assert ready(url), "the copy's teardown or reset stopped the original's endpoint"
    creds = ftctl(copy, "credentials", code=None)
    assert creds.returncode != 0 and url not in creds.stdout  # the original's address is not the copy's
    assert not list((copy / ".ftctl" / "secrets").glob("*.key"))
    ftctl(deployed, "score")  # and the original still scores


def test_a_moved_workspace_keeps_working_and_writes_nothing_at_the_old_path(
    deployed: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    shutil.copytree(deployed, first, symlinks=True)
    ftctl(first, "status")  # adopted as a copy: its own from now on
    moved = tmp_path / "moved"
    first.rename(moved)
    done = ftctl(moved, "run", "--to", "register", "--set", "register.model_name=moved-model")
    assert "moved from" in done.stderr
    assert "- submit: up to date" in done.stderr  # a move makes nothing stale
    assert not first.exists(), sorted(str(p) for p in first.rglob("*"))
    registered = outputs(moved, "register")
    assert registered["model_name"] == "moved-model"
    assert str(moved) in json.dumps(outputs(moved, "submit"))
