"""How ftctl ends (ftctl.exiting): as Python does, less its teardown of every module. Skipping the
teardown must not skip anything a user sees: output still buffered when the command returns (stdout to
a file is block-buffered), atexit handlers (logging, MLflow, temporary folders), threads still working,
the exit status, and a Ctrl-C's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path
    from ftctl import exiting

    out = Path(sys.argv[1])
    atexit.register(lambda: out.with_suffix(".atexit").write_text("ran"))

    def late():
        time.sleep(0.3)
        out.with_suffix(".thread").write_text("finished")

    threading.Thread(target=late).start()  # not a daemon: Python waits for it, so must ftctl
    sys.stdout.write("no newline, still in the buffer")
    sys.stderr.write("to stderr")
    exiting.exit_now(int(sys.argv[2]), interrupted=sys.argv[3] == "interrupted")
    """
)


def _run(tmp_path: Path, code: int, how: str = "normal") -> subprocess.CompletedProcess[str]:
    out = tmp_path / "out"
    with (tmp_path / "stdout").open("w") as stdout:  # a file: block-buffered, flushed only at the end
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(out), str(code), how],
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    return done


def test_buffered_output_atexit_handlers_and_running_threads_all_finish(tmp_path: Path) -> None:
    done = _run(tmp_path, 3)
    assert done.returncode == 3
    assert (tmp_path / "stdout").read_text() == "no newline, still in the buffer"
    assert done.stderr == "to stderr"
    assert (tmp_path / "out.atexit").read_text() == "ran"
    assert (tmp_path / "out.thread").read_text() == "finished"


def test_an_interrupted_end_is_by_sigint(tmp_path: Path) -> None:
    done = _run(tmp_path, 1, "interrupted")
    assert done.returncode == -signal.SIGINT
    assert (tmp_path / "out.atexit").read_text() == "ran"


def test_the_whole_json_reaches_a_file(tmp_path: Path) -> None:
    """`ftctl --json status > file`: the command's whole output, not what a teardown-less exit left behind."""
    target = tmp_path / "status.json"
    with target.open("w") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "ftctl", "--workspace", str(tmp_path / "ws"), "--json", "status"],
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(target.read_text())
    stages = ["auth", "pick-model", "check-compute", "prepare-data", "submit", "register", "deploy", "score"]
    assert [stage["name"] for stage in report["stages"]] == [*stages, "teardown"]


def test_an_error_still_exits_2_with_its_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ftctl", "--workspace", str(tmp_path / "ws"), "status", "--set", "nope=1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "nope" in done.stderr and "Traceback" not in done.stderr
