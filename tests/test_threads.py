"""ftctl.threads: torch's thread count chosen from the cores and the other processes' load (measured
from the kernel's counters, less this process's own time; the load average where they cannot be read),
changed as that load moves, an explicit FTCTL_THREADS, and a user's own OMP_NUM_THREADS left alone.
(Whether the choice is faster is measured in bench/, not here.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from ftctl import threads
from ftctl.errors import UsageError


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [
        (2, 0.0, 2),  # a quiet machine: every core
        (2, 0.4, 2),
        (2, 0.6, 1),  # more than half a core busy: one fewer
        (2, 1.0, 1),
        (2, 4.7, 1),  # busy: one thread, never none
        (16, 3.2, 13),
        (1, 0.0, 1),
        (4, -1.0, 4),  # a nonsensical load reads as none
    ],
)
def test_choose_for_cores_and_load(cores: int, load: float, expected: int) -> None:
    assert threads.choose_for(cores, load) == expected


def test_explicit_setting_wins_over_the_users_omp(monkeypatch: pytest.MonkeyPatch) -> None:
    choice = threads.choose({"FTCTL_THREADS": "3", "OMP_NUM_THREADS": "1"})
    assert (choice.threads, choice.reason) == (3, "FTCTL_THREADS=3")


@pytest.mark.parametrize("name", threads.USER_ENV)
def test_a_users_thread_setting_is_left_alone(name: str) -> None:
    choice = threads.choose({name: "2"})
    assert choice.threads is None
    assert choice.describe() == f"threads: as set ({name}=2)"


def test_without_the_kernels_counters_the_load_average_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "no-such-stat")
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "load_average", lambda: 1.3)
    choice = threads.choose({})
    assert (choice.threads, choice.reason) == (1, "2 cores, load 1.3")
    monkeypatch.setattr(threads, "load_average", lambda: 0.1)
    assert threads.choose({}).threads == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "5000"])
def test_a_bad_explicit_setting_names_the_variable(value: str) -> None:
    with pytest.raises(UsageError, match=r"FTCTL_THREADS=.*whole number of threads") as caught:
        threads.choose({"FTCTL_THREADS": value})
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", 8), ("150000 100000\n", 2), ("50000 100000\n", 1), ("garbage", 8)],
)
def test_a_cgroup_quota_caps_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_max: str, expected: int
) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert threads.usable_cores() == expected


def test_apply_sets_torch_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_state", None)
    monkeypatch.setenv("FTCTL_THREADS", "1")
    try:
        assert threads.apply().threads == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("FTCTL_THREADS", "2")
        assert threads.apply().threads == 1  # chosen once: later calls return the first choice
    finally:
        torch.set_num_threads(before)


PROC_STAT_TEXT = """cpu  {all}
cpu0 {c0} 0 0 0
cpu1 {c1} 0 0 0
cpu2 {c2} 0 0 0
intr 12345 0 0
ctxt 999
"""


def _stat(tmp_path: Path, c0: str, c1: str, c2: str) -> Path:
    path = tmp_path / "stat"
    path.write_text(PROC_STAT_TEXT.format(all="0 0 0 0 0 0 0 0", c0=c0, c1=c1, c2=c2))
    return path


def test_busy_time_counts_the_cores_this_process_may_use_and_not_idle_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # user nice system idle iowait irq softirq steal (in clock ticks)
    monkeypatch.setattr(
        threads,
        "PROC_STAT",
        _stat(tmp_path, "100 10 20 5000 300 1 2 3", "7 0 0 9000 0 0 0 0", "1000 0 0 0 0 0 0 0"),
    )
    ticks = threads.os.sysconf("SC_CLK_TCK")
    assert threads._cores_busy({0, 1}) == pytest.approx((136 + 7) / ticks)  # idle and iowait are not busy
    assert threads._cores_busy({2}) == pytest.approx(1000 / ticks)
    assert threads._cores_busy(set()) == pytest.approx((136 + 7 + 1000) / ticks)  # no affinity: all


@pytest.mark.parametrize("text", ["", "cpu0 1 2 3\n", "cpu0 a b c d e f g h\n"])
def test_unreadable_counters_read_as_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    (tmp_path / "stat").write_text(text)
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "stat")
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    assert threads.read_counters() is None


def test_under_a_quota_the_cgroups_own_usage_is_the_busy_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(threads, "CGROUP_CPU_STAT", tmp_path / "cpu.stat")
    monkeypatch.setattr(threads, "PROC_STAT", tmp_path / "no-such-stat")  # the host's cores do not count
    reading = threads.read_counters()
    assert reading is not None and reading.busy == pytest.approx(2.5)


def test_this_processes_own_time_is_not_counted_as_other_load() -> None:
    before = threads.Reading(wall=100.0, busy=50.0, own=3.0)
    # in 2 s the cores were busy 3 CPU-seconds, 1.8 of them this process's
    after = threads.Reading(wall=102.0, busy=53.0, own=4.8)
    assert threads.others_busy(before, after) == pytest.approx(0.6)
    # counters that go backwards or no time passed: no load rather than a negative one
    assert threads.others_busy(after, before) == 0.0
    assert threads.others_busy(before, before) == 0.0


def test_a_busy_process_beside_this_one_is_measured() -> None:
    import subprocess
    import sys
    import time

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # started
        before = threads.read_counters()
        if before is None:
            pytest.skip("the kernel's CPU counters cannot be read here")
        # This process busy too, so that its own time is discounted. Spin until it has had 0.4 s of
        # CPU rather than for a fixed wall time: on a loaded machine (CI runs two test workers beside
        # the spinner) 0.6 s of wall time gave it only 0.3 s of CPU.
        own_target = time.process_time() + 0.4
        give_up = time.monotonic() + 30
        while time.process_time() < own_target and time.monotonic() < give_up:
            pass
        after = threads.read_counters()
        assert after is not None
        assert after.own - before.own >= 0.4
        assert threads.others_busy(before, after) > 0.4  # the spinner held most of a core
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize(
    ("cores", "load", "current", "expected"),
    [
        (2, 0.6, 2, 2),  # idle 1.4: not far enough from 2 to drop a thread
        (2, 0.7, 2, 1),
        (2, 0.4, 1, 1),  # idle 1.6: not far enough from 1 to add one
        (2, 0.3, 1, 2),
        (2, 1.9, 1, 1),
        (8, 3.0, 8, 5),
    ],
)
def test_a_running_choice_changes_only_when_the_load_moved_enough(
    cores: int, load: float, current: int, expected: int
) -> None:
    assert threads.choose_for(cores, load, current=current) == expected


def _fake_counters(monkeypatch: pytest.MonkeyPatch, readings: list[threads.Reading]) -> None:
    queue = list(readings)
    monkeypatch.setattr(threads, "read_counters", lambda: queue.pop(0))
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)


def test_apply_then_adapt_follow_the_other_load(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    for name in (threads.ENV, *threads.USER_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_state", None)
    long_ago = -1000.0  # adapt() measures again only RECHECK_S after the last reading
    _fake_counters(
        monkeypatch,
        [
            threads.Reading(wall=0.0, busy=0.0, own=0.0),  # choose(): start of the window
            threads.Reading(wall=1.0, busy=1.1, own=1.0),  # its end: 0.1 core of other work
            threads.Reading(wall=long_ago, busy=0.0, own=0.0),  # apply(): adapt's first reference
            threads.Reading(wall=long_ago + 2, busy=2.8, own=0.8),  # 1 core of other work for 2 s
            threads.Reading(wall=long_ago + 4, busy=4.9, own=2.7),  # 0.1 core: the machine is free again
        ],
    )
    try:
        choice = threads.apply()
        assert (choice.threads, choice.reason) == (2, "2 cores, 0.1 busy with other work")
        assert torch.get_num_threads() == 2
        changed = threads.adapt()
        assert changed is not None and changed.threads == 1 and torch.get_num_threads() == 1
        assert changed.describe() == "threads: 1 (2 cores, 1.0 busy with other work)"
        changed = threads.adapt()
        assert changed is not None and changed.threads == 2 and torch.get_num_threads() == 2
        assert threads.apply() is changed  # apply() reports the current choice
    finally:
        torch.set_num_threads(before)


def test_adapt_leaves_an_explicit_choice_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_state", None)
    monkeypatch.setenv(threads.ENV, "1")
    _fake_counters(monkeypatch, [threads.Reading(wall=-1000.0, busy=0.0, own=0.0)] * 4)
    try:
        assert threads.apply().threads == 1
        assert threads.adapt() is None
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_forked_child_chooses_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        threads, "_state", threads._State(pid=-1, started=None, choice=threads.Choice(7, "parent"))
    )
    monkeypatch.setenv(threads.ENV, "3")
    monkeypatch.setattr(threads, "_set_torch", lambda n: None)
    assert threads.apply().threads == 3  # not the parent's (another pid's) 7


@pytest.mark.parametrize("cpu_stat", ["", "usage_usec lots\n", "user_usec 5\n"])
def test_a_quota_whose_usage_cannot_be_read_falls_back_to_the_load_average(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu_stat: str
) -> None:
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    (tmp_path / "cpu.stat").write_text(cpu_stat)
    monkeypatch.setattr(threads, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(threads, "CGROUP_CPU_STAT", tmp_path / "cpu.stat")
    monkeypatch.setattr(threads, "load_average", lambda: 0.2)
    assert threads.read_counters() is None
    choice = threads.choose({})
    assert (choice.threads, choice.reason) == (1, "1 core, load 0.2")
