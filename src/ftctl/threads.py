"""How many CPU threads torch computes with, chosen for this machine: its cores and how busy they are.

torch's default is one thread per core it sees. On a machine whose cores are already busy (other
processes, another ftctl stage), its threads wait on each other: measured on a 2-core machine under
load, decoding with SmolLM2-135M was 4-5x and a training step ~3x slower with the default than with one
thread (bench/README.md, "Threads"). So each process that runs a model (the trainer, the evaluation,
the local endpoint) asks `apply()` once, before its first model is loaded:

- `FTCTL_THREADS=N` wins (an explicit choice for ftctl);
- else a thread count the user gave torch's libraries (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`) is kept:
  torch read it at start-up, and ftctl leaves it alone;
- else the cores this process may use (its CPU affinity, and a cgroup CPU quota where there is one) less
  the load average of the last minute, rounded, at least 1.

Nothing is imported here at module import time beyond the standard library; torch only inside apply().
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import UsageError

ENV = "FTCTL_THREADS"
USER_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


@dataclass(frozen=True)
class Choice:
    threads: int | None  # None: left as torch has it (the user set it through the environment)
    reason: str  # for logs: "2 cores, load 0.4" or "OMP_NUM_THREADS=1"

    def describe(self) -> str:
        return f"threads: {self.threads if self.threads is not None else 'as set'} ({self.reason})"


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs granted by /sys/fs/cgroup/cpu.max ("max 100000" = no quota)."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text(encoding="ascii").split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_for(cores: int, load: float) -> int:
    """Threads for a process starting on `cores` cores with this 1-minute load average: the idle cores,
    rounded, at least 1 (the process itself is about to need one)."""
    idle = cores - max(0.0, load)
    return max(1, min(cores, int(idle + 0.5)))


def choose(environ: dict[str, str] | None = None) -> Choice:
    """What apply() does, without doing it (a bad FTCTL_THREADS is a UsageError naming it)."""
    env = dict(os.environ if environ is None else environ)
    explicit = env.get(ENV, "").strip()
    if explicit:
        if not explicit.isdigit() or not 1 <= int(explicit) <= 4096:
            raise UsageError(f"{ENV}={explicit!r}: expected a whole number of threads, 1..4096")
        return Choice(int(explicit), f"{ENV}={explicit}")
    for name in USER_ENV:
        if env.get(name, "").strip():
            return Choice(None, f"{name}={env[name].strip()}")
    cores, load = usable_cores(), load_average()
    return Choice(choose_for(cores, load), f"{cores} cores, load {load:.1f}")


_applied: Choice | None = None


def apply() -> Choice:
    """Set torch's intra-op thread count as chosen (once per process; later calls return the choice)."""
    global _applied
    if _applied is None:
        choice = choose()
        if choice.threads is not None:
            import torch

            torch.set_num_threads(choice.threads)
        _applied = choice
    return _applied
