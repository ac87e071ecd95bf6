"""Terminal output: progress and messages to stderr, results to stdout (JSON with --json)."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO


class UI:
    def __init__(self, json_mode: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self._out = out
        self._err = err

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr

    def info(self, message: str) -> None:
        """A progress or status line; stderr, so stdout stays clean for results and --json."""
        print(message, file=self.err, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.err, flush=True)

    def result(self, text: str) -> None:
        """Human-readable result (suppressed with --json, where emit() carries the data)."""
        if not self.json_mode:
            print(text, file=self.out, flush=True)

    def emit(self, data: Any) -> None:
        if self.json_mode:
            print(json.dumps(data, indent=2, default=str), file=self.out, flush=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)
