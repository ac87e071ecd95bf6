"""The order in which test files are handed out to pytest-xdist's workers (`-n 2 --dist loadfile`).

pytest-xdist hands each worker one file at a time, in the order of the collection (conftest.py turns off
its own reordering, by number of tests, which put the few long files last: one worker went on alone for
up to 35 s at the end of a run). Here files go out longest first, so the shortest come last and both
workers finish together, except for a lead of files that need no trained snapshot: those keep the
workers busy while the snapshots are built in the background (tests/snapshots.py) at the start.

A file's length is its seconds in tests/durations.json, measured on a whole run and written by
`python tools/test_durations.py REPORT.xml` (from `pytest --junitxml=REPORT.xml`); a file not in it is
estimated from its tests. The order changes only how long a run takes, never which tests run or how.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

import snapshots

DURATIONS = snapshots.TESTS / "durations.json"
# Seconds of tests that need no trained snapshot to run first: about what building it takes, per worker.
LEAD_S = 60.0
# A file missing from durations.json: seconds per test, by tier.
ESTIMATE_S = {"integration": 10.0, "fast": 0.2}


def durations() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def order(items: list[pytest.Item], module_of: Callable[[pytest.Item], str]) -> list[pytest.Item]:
    """`items` by file: the lead, then longest first; within a file, as collected, summary tests last."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(module_of(item), []).append(item)
    known = durations()

    def seconds(module: str) -> float:
        if module in known:
            return known[module]
        tiers = ["integration" if i.get_closest_marker("integration") else "fast" for i in files[module]]
        return sum(ESTIMATE_S[tier] for tier in tiers)

    def waits(module: str) -> bool:
        needs = set().union(*(snapshots.needed(set(getattr(i, "fixturenames", ()))) for i in files[module]))
        return bool(needs - {"prepared"})

    longest_first = sorted(files, key=lambda module: (-seconds(module), module))
    lead: list[str] = []
    for module in (m for m in longest_first if not waits(m)):
        if sum(seconds(m) for m in lead) >= LEAD_S:
            break
        lead.append(module)
    ordered = lead + [m for m in longest_first if m not in lead]
    return [
        item
        for module in ordered
        for item in sorted(files[module], key=lambda item: item.get_closest_marker("summary") is not None)
    ]
