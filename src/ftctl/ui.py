"""Terminal output: progress and messages to stderr, results to stdout (JSON with --json).

Work that takes a while reports through `UI.progress` (a task with steps: training, rows) or
`UI.spinner` (a wait with no count: an endpoint loading its model, a registration). On a terminal
(stderr is a TTY, not --json) they draw a live Rich bar or spinner; otherwise (piped, redirected to a
file, --json, TERM=dumb or FTCTL_PROGRESS=plain) they write plain lines with no control codes. Stages
only call these methods; they never look at the terminal themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 1h02m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# Control characters other than newline and tab: C0, DEL and C1. Text from a dataset, a model or a log
# may hold terminal escape sequences (ESC [ ... to move the cursor, OSC to retitle the window or set the
# clipboard); shown raw, they act on the user's terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with control characters shown as escapes (`\\x1b`), as git and less show them; newlines and
    tabs kept. Everything ftctl prints for a person goes through it (JSON output escapes by itself)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class Progress:
    """One task in progress. `update` moves it on; `log` prints a line that stays.

    Made by `UI.progress`; on a terminal it drives a Rich progress bar, otherwise every `update` writes
    one plain line (callers update at a sensible rate: the trainer reports every logging_steps).
    """

    def __init__(self, ui: UI, description: str, total: float | None, unit: str) -> None:
        self.ui = ui
        self.description = description
        self.total = total
        self.unit = unit
        self.completed: float = 0
        self.info = ""
        self.eta_s: float | None = None
        self._started = time.monotonic()
        self._first: tuple[float, float] | None = None  # (time, completed) of the first update
        self._rich: Any = None  # (rich Progress, task id) on a terminal
        self._task: Any = None

    def update(
        self,
        completed: float | None = None,
        *,
        total: float | None = None,
        info: str | None = None,
        eta_s: float | None = None,
        quiet: bool = False,
    ) -> None:
        """Set the count (and total), a short text after the bar (e.g. "loss 1.23  410 tok/s") and the
        estimated seconds left; without `eta_s` the ETA is extrapolated from the updates so far.
        `quiet`: move the live bar only, no plain line (when the caller logs its own line)."""
        now = time.monotonic()
        if total is not None:
            self.total = total
        if completed is not None:
            if self._first is None:
                self._first = (now, completed)
            self.completed = completed
        if info is not None:
            self.info = info
        self.eta_s = eta_s if eta_s is not None else self._estimate(now)
        if self._rich is not None:
            self._rich.update(
                self._task,
                completed=self.completed,
                total=self.total,
                info=self._suffix(),
                refresh=True,  # draw every update now: they come at the caller's pace, not ours
            )
        elif not quiet:
            self.ui.info(f"  {self.line()}")

    def set_total(self, total: float | None) -> None:
        """Set the total once it is known, without a plain line."""
        self.total = total
        if self._rich is not None:
            self._rich.update(self._task, total=total)

    def _estimate(self, now: float) -> float | None:
        if not self.total or self._first is None:
            return None
        first_time, first_done = self._first
        done = self.completed - first_done
        if done <= 0 or now <= first_time:
            return None
        return (self.total - self.completed) * (now - first_time) / done

    def _suffix(self) -> str:
        parts = [self.info] if self.info else []
        if self.total and self.completed < self.total and self.eta_s is not None:
            parts.append(f"ETA {format_duration(self.eta_s)}")
        return "  ".join(parts)

    def _count(self) -> str:
        def num(value: float) -> str:
            return f"{value:g}" if isinstance(value, float) else str(value)

        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            pct = 100.0 * self.completed / self.total if self.total else 0.0
            return f"{num(self.completed)}/{num(self.total)}{unit} ({pct:.0f}%)"
        return f"{num(self.completed)}{unit}"

    def line(self) -> str:
        """The plain-text line for the current state: `training: 10/50 steps (20%)  loss 1.2  ETA 40s`."""
        suffix = self._suffix()
        return f"{self.description}: {self._count()}" + (f"  {suffix}" if suffix else "")

    def log(self, message: str) -> None:
        """A line that stays (above the live bar on a terminal)."""
        self.ui.info(message)


class UI:
    def __init__(self, json_mode: bool = False, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self._out = out
        self._err = err
        self._console: Any = None  # the Rich console of the live display, while one is up

    @property
    def out(self) -> TextIO:
        return self._out or sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err or sys.stderr

    @property
    def live(self) -> bool:
        """Whether progress is drawn live (a terminal) rather than written as plain lines."""
        if self.json_mode or os.environ.get("FTCTL_PROGRESS", "").lower() == "plain":
            return False
        if os.environ.get("TERM") == "dumb":
            return False
        try:
            return bool(self.err.isatty())
        except (AttributeError, ValueError):
            return False

    def info(self, message: str) -> None:
        """A progress or status line; stderr, so stdout stays clean for results and --json."""
        message = printable(message)
        if self._console is not None:
            self._console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            print(message, file=self.err, flush=True)

    def warn(self, message: str) -> None:
        self.info(f"warning: {message}")

    def result(self, text: str) -> None:
        """Human-readable result (suppressed with --json, where emit() carries the data)."""
        if not self.json_mode:
            print(printable(text), file=self.out, flush=True)

    def emit(self, data: Any) -> None:
        if self.json_mode:
            print(json.dumps(data, indent=2, default=str), file=self.out, flush=True)

    def _rich_console(self) -> Any:
        from rich.console import Console

        return Console(file=self.err, highlight=False, force_terminal=True)

    @contextlib.contextmanager
    def progress(
        self, description: str, total: float | None = None, unit: str = "", ticked: bool = False
    ) -> Iterator[Progress]:
        """A task with a count (steps, rows): a live bar with the count, `info`, ETA and elapsed time on
        a terminal; one plain line per `update` otherwise. Nesting draws the inner one as plain lines.

        `ticked`: the caller updates the bar several times a second, from the thread doing the work, and
        the bar is drawn only then: no drawing thread runs beside it (prepare-data forks its helper only
        from a process with no other thread)."""
        task = Progress(self, description, total, unit)
        if not self.live or self._console is not None:
            yield task
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        console = self._rich_console()
        columns = [
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn(unit),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        ]
        with RichProgress(
            *columns,
            console=console,
            transient=False,
            refresh_per_second=8,
            redirect_stdout=False,
            auto_refresh=not ticked,
        ) as bar:
            task._rich = bar
            task._task = bar.add_task(description, total=total, info="")
            self._console = console
            try:
                yield task
                if not task.total:  # done: a count with no total ends as N/N, not a frozen spinner
                    bar.update(task._task, total=max(task.completed, 1), completed=max(task.completed, 1))
            finally:
                self._console = None

    @contextlib.contextmanager
    def spinner(self, description: str, quiet: bool = False) -> Iterator[None]:
        """A wait with nothing to count: a spinner with the elapsed time on a terminal, else one line
        (none with `quiet`, for short waits)."""
        if not self.live or self._console is not None:
            if not quiet:
                self.info(f"  {description}...")
            yield
            return
        from rich.progress import Progress as RichProgress
        from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

        console = self._rich_console()
        with RichProgress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            redirect_stdout=False,
        ) as bar:
            bar.add_task(description, total=None)
            self._console = console
            try:
                yield
            finally:
                self._console = None


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def fit(text: str, width: int) -> str:
    """`text` in at most `width` characters: cut after the last whole word that fits, marked with an
    ellipsis (a first word longer than `width` is the only thing ever cut inside)."""
    if len(text) <= width:
        return text
    room = max(width - 1, 1)
    head = text[: room + 1]
    cut = head.rfind(" ")
    kept = head[:cut] if cut > 0 else text[:room]
    return kept.rstrip(" ,;:(") + "…"
