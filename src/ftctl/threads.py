"""How many CPU threads torch computes with, chosen for this machine: its cores and how busy other
processes keep them, measured, and measured again while a long job runs.

torch's default is one thread per core it sees. On a machine whose cores are already busy (other
processes, another ftctl stage), its threads wait on each other: measured on a 2-core machine under
load, decoding with SmolLM2-135M was 4-5x and a training step ~3x slower with the default than with one
thread; on the same machine idle, two threads trained the tiny model 1.7x faster than one (bench/README.md,
"Threads"). So each process that runs a model (the trainer, the evaluation, the local endpoint) asks
`apply()` once, before its first model is loaded:

- `FTCTL_THREADS=N` wins (an explicit choice for ftctl);
- else a thread count the user gave torch's libraries (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`) is kept:
  torch read it at start-up, and ftctl leaves it alone;
- else the cores this process may use (its CPU affinity, and a cgroup CPU quota where there is one)
  less the cores other processes kept busy while it started (at least `SAMPLE_S`), rounded, at least 1.
  "Other" is what the kernel counts as busy on those cores (or in this cgroup, under a quota) less
  this process's own CPU time, so ftctl's own start-up (its imports, a stage running beside it) does not
  count against it, as it did when this read the 1-minute load average. Where the kernel's counters
  cannot be read (not Linux), the load average decides.

A long-running process then calls `adapt()` as it goes (the trainer after each step, the endpoint before
each generation): every `RECHECK_S` it measures again over the time since the last check and changes
torch's thread count when the other processes' load has moved by more than `HYSTERESIS` cores from
what the current count assumes.

Nothing is imported here at module import time beyond the standard library; torch only when setting.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import UsageError

ENV = "FTCTL_THREADS"
USER_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_CPU_STAT = Path("/sys/fs/cgroup/cpu.stat")
PROC_STAT = Path("/proc/stat")
SAMPLE_S = 0.25  # the shortest window the first choice is measured over
RECHECK_S = 2.0  # how often adapt() measures again
HYSTERESIS = 0.65  # cores: how far the idle cores must move from the current count to change it


@dataclass(frozen=True)
class Choice:
    threads: int | None  # None: left as torch has it (the user set it through the environment)
    reason: str  # for logs: "2 cores, 0.1 busy with other work" or "OMP_NUM_THREADS=1"
    automatic: bool = False  # chosen from the cores and their load (adapt() may change it)

    def describe(self) -> str:
        return f"threads: {self.threads if self.threads is not None else 'as set'} ({self.reason})"


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    cores = len(_affinity()) or os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return set()


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


# --- what other processes keep busy -------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    wall: float  # time.monotonic()
    busy: float  # CPU-seconds the counted cores (or this cgroup) have been busy, every process together
    own: float  # CPU-seconds this process has used, all its threads


def read_counters() -> Reading | None:
    """The kernel's busy time where this process runs: this cgroup's usage under a CPU quota (the host's
    other tenants do not compete for it), else /proc/stat's per-core counters of the cores in this
    process's affinity. None where neither can be read."""
    busy = _cgroup_busy() if _cgroup_quota() is not None else _cores_busy(_affinity())
    if busy is None:
        return None
    return Reading(wall=time.monotonic(), busy=busy, own=time.process_time())


def _cgroup_busy() -> float | None:
    try:
        for line in CGROUP_CPU_STAT.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == "usage_usec":
                return int(value) / 1e6
    except (OSError, ValueError):
        return None
    return None


def _cores_busy(cores: set[int]) -> float | None:
    """Busy CPU-seconds of `cores` (all of them when empty): user, nice, system, irq, softirq and steal;
    not idle or iowait (guest time is already inside user)."""
    try:
        lines = PROC_STAT.read_text(encoding="ascii").splitlines()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    total = 0
    seen = False
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if cores and int(name[3:]) not in cores:
            continue
        try:
            fields = [int(x) for x in rest.split()]
        except ValueError:
            return None
        if len(fields) < 8:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        total += user + nice + system + irq + softirq + steal
        seen = True
    return total / ticks if seen and ticks > 0 else None


def others_busy(before: Reading, after: Reading) -> float:
    """Cores that processes other than this one kept busy between two readings."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others / wall)


# --- the choice -----------------------------------------------------------------------------------------


def choose_for(cores: int, load: float, current: int | None = None) -> int:
    """Threads for a process on `cores` cores while other work keeps `load` cores busy: the idle cores,
    rounded, at least 1 (the process itself is about to need one). With a `current` count, it stays
    unless the idle cores are HYSTERESIS or more away from it (no flapping on a load near a half)."""
    idle = cores - max(0.0, load)
    if current is not None and abs(idle - current) < HYSTERESIS:
        return current
    return max(1, min(cores, int(idle + 0.5)))


MAX_THREADS = 4096


def check(environ: Mapping[str, str] | None = None) -> None:
    """A UsageError (exit 2) naming FTCTL_THREADS when it is set to anything but 1..MAX_THREADS: every
    command checks it up front (ftctl.cli.common.build_context), not only the trainer or endpoint that
    reads it, long after the command started. Cheap: no torch, no measuring."""
    _explicit(os.environ if environ is None else environ)


def _explicit(env: Mapping[str, str]) -> Choice | None:
    explicit = env.get(ENV, "").strip()
    if explicit:
        # ASCII digits only ("²" is a digit to str.isdigit, not to int()), few enough for int() to read.
        if not (explicit.isascii() and explicit.isdigit() and len(explicit) <= 10) or not (
            1 <= int(explicit) <= MAX_THREADS
        ):
            raise UsageError(
                f"{ENV}={_shown(explicit)}: expected a whole number of threads, 1..{MAX_THREADS} "
                "(or unset: chosen from the cores and their load)"
            )
        return Choice(int(explicit), f"{ENV}={explicit}")
    for name in USER_ENV:
        if env.get(name, "").strip():
            return Choice(None, f"{name}={env[name].strip()}")
    return None


def choose(environ: dict[str, str] | None = None, since: Reading | None = None) -> Choice:
    """What apply() does, without setting torch (a bad FTCTL_THREADS is a UsageError naming it).
    Measured from `since` (waiting until SAMPLE_S has passed), or over SAMPLE_S from now."""
    fixed = _explicit(dict(os.environ if environ is None else environ))
    if fixed is not None:
        return fixed
    cores = usable_cores()
    start = since or read_counters()
    if start is None:
        load = load_average()
        return Choice(choose_for(cores, load), f"{_cores(cores)}, load {load:.1f}", automatic=True)
    time.sleep(max(0.0, start.wall + SAMPLE_S - time.monotonic()))
    now = read_counters()
    busy = others_busy(start, now) if now is not None else load_average()
    return Choice(choose_for(cores, busy), _reason(cores, busy), automatic=True)


def _shown(value: str) -> str:
    """`value` as typed when it is plain text, else quoted and escaped (cut to 40 characters)."""
    if value.isascii() and value.isprintable() and " " not in value and len(value) <= 40:
        return value
    shown = ascii(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _reason(cores: int, busy: float) -> str:
    return f"{_cores(cores)}, {busy:.1f} busy with other work"


def _cores(count: int) -> str:
    return f"{count} core" if count == 1 else f"{count} cores"


# --- this process ------------------------------------------------------------------------------------


@dataclass
class _State:
    pid: int
    started: Reading | None  # begin()'s reading
    choice: Choice | None = None  # what apply() chose, then adapt()'s latest
    last: Reading | None = None  # adapt()'s previous reading


_state: _State | None = None


def _here() -> _State:
    """This process's state (a process forked after begin() or apply() starts afresh)."""
    global _state
    if _state is None or _state.pid != os.getpid():
        _state = _State(pid=os.getpid(), started=None)
    return _state


def begin() -> None:
    """Start measuring now: apply() later measures from here, so the measurement overlaps the process's
    own start-up (which it discounts) instead of adding SAMPLE_S to it."""
    state = _here()
    if state.choice is None:
        state.started = read_counters()


def apply() -> Choice:
    """Set torch's intra-op thread count as chosen (once per process; later calls return the choice)."""
    state = _here()
    if state.choice is None:
        choice = choose(since=state.started)
        if choice.threads is not None:
            _set_torch(choice.threads)
        state.choice, state.last = choice, read_counters()
    return state.choice


def adapt() -> Choice | None:
    """Measure again if RECHECK_S has passed since the last time, and change torch's thread count when
    other processes' load has moved; the new choice when it changed, else None. Only an automatic
    choice moves (FTCTL_THREADS and OMP_NUM_THREADS stay as set); cheap to call on every step."""
    state = _here()
    choice, last = state.choice, state.last
    if choice is None or not choice.automatic or last is None or time.monotonic() - last.wall < RECHECK_S:
        return None
    now = read_counters()
    if now is None:
        return None
    state.last = now
    cores = usable_cores()
    busy = others_busy(last, now)
    threads = choose_for(cores, busy, current=choice.threads)
    if threads == choice.threads:
        return None
    _set_torch(threads)
    state.choice = Choice(threads, _reason(cores, busy), automatic=True)
    return state.choice


def _set_torch(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
