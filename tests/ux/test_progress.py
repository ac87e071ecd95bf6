"""Progress output: a live Rich bar on a terminal, plain lines (no control codes) otherwise."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

from ftctl.backends.local.stages.submit import _Follower
from ftctl.ui import UI, format_duration

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n
EVENTS = [
    {"time": 100.0, "type": "start", "train_examples": 40, "dropped_examples": 0, "eval_examples": 8,
     "max_steps": 10, "device": "cpu", "apply_lora": True, "trainable_params": 1000},
    {"time": 101.0, "type": "eval", "step": 0, "max_steps": 10, "eval_loss": 3.5, "perplexity": 33.1},
    {"time": 104.0, "type": "progress", "step": 2, "max_steps": 10, "epoch": 0.2, "loss": 1.9876,
     "learning_rate": 0.002, "tokens_per_second": 812.0},
    {"time": 108.0, "type": "progress", "step": 4, "max_steps": 10, "epoch": 0.4, "loss": 1.5432,
     "learning_rate": 0.0015, "tokens_per_second": 790.0},
    {"time": 109.0, "type": "warning", "message": "something to know"},
    {"time": 120.0, "type": "progress", "step": 10, "max_steps": 10, "epoch": 1.0, "loss": 1.2,
     "learning_rate": 0.0, "tokens_per_second": 800.0},
]  # fmt: skip


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Ctx:
    def __init__(self, ui: UI) -> None:
        self.ui = ui


@pytest.fixture(autouse=True)
def _auto_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTCTL_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def _follow_events(ui: UI) -> None:
    with ui.progress("training", unit="steps") as bar:
        follower = _Follower(_Ctx(ui), bar)  # type: ignore[arg-type]
        for event in EVENTS:
            follower(event)


def test_plain_lines_when_not_a_terminal() -> None:
    err = io.StringIO()
    _follow_events(UI(err=err))
    text = err.getvalue()
    assert not CONTROL.search(text), repr(text)
    lines = text.splitlines()
    assert "  40 training conversations (0 dropped), 10 steps on cpu" in lines
    assert "  eval_loss 3.5000  perplexity 33.10  (step 0)" in lines
    # The ETA is the job's own pace: 8 s for 4 steps since its start -> 12 s for the 6 left.
    assert "  training: 4/10 steps (40%)  loss 1.5432  lr 1.50e-03  790 tok/s  ETA 12s" in lines
    assert "warning: something to know" in lines
    assert lines[-1] == "  training: 10/10 steps (100%)  loss 1.2000  lr 0.00e+00  800 tok/s"


def test_json_mode_is_plain_even_on_a_terminal() -> None:
    err = FakeTerminal()
    _follow_events(UI(json_mode=True, err=err))
    assert "\x1b" not in err.getvalue() and "training: 2/10 steps (20%)" in err.getvalue()


def test_plain_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTCTL_PROGRESS", "plain")
    assert UI(err=FakeTerminal()).live is False
    monkeypatch.setenv("FTCTL_PROGRESS", "auto")
    monkeypatch.setenv("TERM", "dumb")
    assert UI(err=FakeTerminal()).live is False


def test_live_bar_on_a_terminal() -> None:
    err = FakeTerminal()
    _follow_events(UI(err=err))
    text = err.getvalue()
    assert "\x1b[" in text  # drawn with control codes
    assert "━" in text  # the bar
    assert "loss 1.5432" in text and "790 tok/s" in text
    assert "ETA 12s" in text
    assert "10/10" in text
    # Lines that stay are printed above the bar, not as progress lines.
    assert "eval_loss 3.5000  perplexity 33.10" in text
    assert "warning: something to know" in text
    assert "training: 4/10 steps (40%)" not in text


def test_quiet_update_and_spinner_print_no_plain_line() -> None:
    err = io.StringIO()
    ui = UI(err=err)
    with ui.progress("reading", unit="rows") as bar:
        bar.update(10, quiet=True)
        bar.log("  split a: 10 rows")
        bar.update(30)
    with ui.spinner("loading", quiet=True):
        pass
    with ui.spinner("waiting for the endpoint"):
        pass
    assert err.getvalue().splitlines() == [
        "  split a: 10 rows",
        "  reading: 30 rows",
        "  waiting for the endpoint...",
    ]


def test_eta_is_extrapolated_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.0, 10.0])
    monkeypatch.setattr("ftctl.ui.time.monotonic", lambda: next(clock))
    err = io.StringIO()
    ui = UI(err=err)
    with ui.progress("rows", total=100, unit="rows") as bar:  # the clock: created at 0
        bar.update(0)  # 0 s
        bar.update(20)  # 10 s for 20 rows -> 40 s for the 80 left
    assert err.getvalue().splitlines()[-1] == "  rows: 20/100 rows (20%)  ETA 40s"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3599, "59m59s"), (7260, "2h01m")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_piped_submit_writes_readable_lines(trained) -> None:
    """`ftctl submit` with stderr captured (not a terminal), re-attaching to the session's real job."""
    text = trained.interrupted("submit").stderr
    assert not CONTROL.search(text), repr(text[:2000])
    assert "  re-attaching to job " in text
    assert "  400 training conversations (0 dropped), 8 steps on cpu" in text
    assert re.search(
        r"^  training: 4/8 steps \(50%\)  loss \d+\.\d{4}  lr \S+  [\d,]+ tok/s  ETA \d+s$",
        text,
        re.MULTILINE,
    ), text
    assert re.search(
        r"^  training: 8/8 steps \(100%\)  loss \d+\.\d{4}  lr \S+  [\d,]+ tok/s$", text, re.MULTILINE
    )
    assert (
        len(re.findall(r"^  eval_loss \d+\.\d+  perplexity \d+\.\d+  \(step \d\)$", text, re.MULTILINE)) == 5
    )
    assert "  done: train_loss " in text


def test_other_stages_write_readable_lines(trained) -> None:
    prepare, register = trained.transcripts["prepare"], trained.transcripts["register"]
    assert not CONTROL.search(prepare + register)
    assert "  train_sft: 400 rows, 0 dropped" in prepare.splitlines()
    assert "  registering ftctl-tiny-phi3-chat-ultrachat-200k in the MLflow model registry..." in register


def test_submit_in_a_terminal_draws_a_live_bar(trained) -> None:
    """The session's `ftctl submit`, on a pseudo-terminal while the job trained."""
    drawn = trained.transcripts["terminal"]
    assert "\x1b[" in drawn and "━" in drawn  # drawn, with colours and cursor moves
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", drawn)  # the text on it
    bar = r"training ━+\S* \d/8 steps +loss \d\.\d{4}  lr \S+  [\d,]+ tok/s  ETA \d+s"
    assert re.search(bar, screen), screen[-3000:]
    assert re.search(r"training ━+ 8/8 steps +loss \d\.\d{4}", screen)
    assert "eval_loss " in screen and "  done: train_loss" in screen
    assert "training: 4/8 steps" not in screen  # no plain progress lines on a terminal


@pytest.mark.parametrize(("ticked", "threads"), [(True, 1), (False, 2)])
def test_a_ticked_bar_is_drawn_by_its_caller_with_no_thread_beside_it(ticked: bool, threads: int) -> None:
    """prepare-data's bar is ticked: drawn when its caller updates it, with no drawing thread (its helper
    is forked only from a process with no other thread); other bars keep Rich's refresh thread."""
    code = f"""
import io, threading
from ftctl.ui import UI
class Terminal(io.StringIO):
    def isatty(self): return True
err = Terminal()
with UI(err=err).progress("reading", unit="rows", ticked={ticked}) as bar:
    bar.update(256, quiet=True)
    print(threading.active_count())
assert "256" in err.getvalue()
"""
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("FTCTL_PROGRESS", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(done.stdout.strip()) == threads, done.stderr
