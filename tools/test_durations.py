"""Write tests/durations.json, each test file's seconds, from a JUnit report of a whole run.

    python -m pytest -n 2 --dist loadfile --junitxml=/tmp/report.xml
    python tools/test_durations.py /tmp/report.xml

tests/schedule.py reads it to hand the longest files to pytest-xdist's workers first; a stale or missing
entry only makes a run less evenly spread, never changes a test.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def module_of(classname: str) -> str | None:
    """`tests.reliability.test_crash` (or `...test_crash.TestClass`) -> `reliability/test_crash.py`."""
    parts = classname.split(".")
    if parts and parts[0] == "tests":
        parts = parts[1:]
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end]) + ".py"
        if (TESTS / candidate).is_file():
            return candidate
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    seconds: dict[str, float] = defaultdict(float)
    for case in ElementTree.parse(argv[0]).getroot().iter("testcase"):
        module = module_of(case.get("classname", ""))
        if module is not None:
            seconds[module] += float(case.get("time", "0") or 0)
    if not seconds:
        print(f"error: no test cases of tests/ in {argv[0]}", file=sys.stderr)
        return 2
    out = TESTS / "durations.json"
    text = json.dumps({module: round(value, 1) for module, value in sorted(seconds.items())}, indent=1)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(out)
    print(f"{out}: {len(seconds)} files, {sum(seconds.values()):.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
