"""ftctl.threads: torch's thread count chosen from the cores and the load, an explicit FTCTL_THREADS, and
a user's own OMP_NUM_THREADS left alone. (Whether the choice is faster is measured in bench/, not here.)"""

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


def test_without_settings_the_cores_and_load_decide(monkeypatch: pytest.MonkeyPatch) -> None:
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
    monkeypatch.setattr(threads, "_applied", None)
    monkeypatch.setenv("FTCTL_THREADS", "1")
    try:
        assert threads.apply().threads == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("FTCTL_THREADS", "2")
        assert threads.apply().threads == 1  # chosen once: later calls return the first choice
    finally:
        torch.set_num_threads(before)
