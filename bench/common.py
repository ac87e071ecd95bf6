"""Shared benchmark plumbing: timing alternating contenders, peak RSS, tables, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in (
        "ftctl",
        "torch",
        "transformers",
        "peft",
        "trl",
        "mlflow",
        "datasets",
        "pyarrow",
        "azure-ai-ml",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(ram, 1),
        "gpu": None,
        "versions": versions,
        # 1, 5 and 15-minute load averages when the result was written: the benchmark's own processes
        # count too, so on 2 cores a load well above ~1.5 means other work shared the machine
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def run_measured(
    command: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, quiet: bool = True
) -> tuple[float, int]:
    """Run a command; (wall seconds, peak RSS in bytes of the process tree's largest member)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL if quiet else None,
        stderr=subprocess.PIPE if quiet else None,
    )
    _, err = proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}: {(err or b'').decode()[-2000:]}")
    # ru_maxrss of waited-for children (KiB on Linux): the largest process among them so far.
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return elapsed, peak


def peak_rss_of(command: Sequence[str], **kwargs: Any) -> tuple[float, int]:
    """Wall time and peak RSS of one command, measured in a fresh helper process (so the
    RUSAGE_CHILDREN maximum belongs to this command alone)."""
    code = (
        "import json,sys,subprocess,time,resource;"
        "t=time.perf_counter();r=subprocess.run(json.loads(sys.argv[1]),stdout=subprocess.DEVNULL,"
        "stderr=subprocess.PIPE);e=time.perf_counter()-t;"
        "sys.stderr.write(r.stderr.decode()[-3000:]) if r.returncode else None;"
        "print(json.dumps([r.returncode,e,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(command))], capture_output=True, text=True, **kwargs
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise RuntimeError(out.stderr[-3000:])
    code_, elapsed, peak = json.loads(out.stdout.strip().splitlines()[-1])
    if code_ != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code_}: {out.stderr[-3000:]}")
    return float(elapsed), int(peak)


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def alternate(contenders: dict[str, Callable[[], float]], repetitions: int) -> dict[str, list[float]]:
    """Call each contender once per round, in alternating order, `repetitions` rounds."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(repetitions):
        order = names if round_ % 2 == 0 else list(reversed(names))
        for name in order:
            samples[name].append(contenders[name]())
    return samples


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def fmt(value: float, unit: str = "s") -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:,.1f} {unit}"


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def ftctl_command() -> list[str]:
    """How to start ftctl, with its bytecode compiled first: a regular `pip install` compiles it at install
    time, but an editable one has none until an import writes it, and under PYTHONDONTWRITEBYTECODE=1 none
    ever does (each start compiled ftctl's modules again: ~20 ms of a 200 ms `ftctl status`)."""
    import compileall

    import ftctl

    compileall.compile_dir(Path(ftctl.__file__).parent, quiet=1)
    exe = Path(sys.executable).with_name("ftctl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ftctl"]
