"""Gather concurrent scoring requests into one `model.generate` call.

While the model is busy with one batch, new requests queue up; the next call takes every queued
request with the same generation settings (up to `max_batch_size` conversations). With one client
nothing waits; with many, one padded batch replaces many sequential calls, which is where a small
model on a CPU (or any model on a GPU) gains most of its throughput.

Requests that cannot share a batch go straight to the generator: a fixed `seed` (its sampling must not
depend on its neighbours) and streaming.

Clients that wait for their reply before sending the next request all send again the moment a batch
ends, a millisecond or so apart. Taking only the first of them would alternate a batch of one with a
batch of the rest, each costing about as much as a full one. So the next batch waits, for at most a
quarter of the last batch's time (and GATHER_MAX_S), until as many conversations are queued as there
were when the last batch ended (its own and those that queued meanwhile). After a batch of one with
none queued, nothing waits: a lone client pays no latency for it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol


class _Inner(Protocol):
    def generate(
        self,
        conversations: list[list[dict]],
        params: dict[str, Any],
        *,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> list[str]: ...


GATHER_MAX_S = 0.02  # the longest a batch waits for the clients of the one before to send again


class Timeout(TimeoutError):
    """The request's deadline passed while it waited or ran."""


@dataclass
class _Pending:
    conversations: list[list[dict]]
    params: dict[str, Any]
    deadline: float | None
    cancel: threading.Event | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[str] | None = None
    error: BaseException | None = None

    @property
    def key(self) -> str:
        return json.dumps(self.params, sort_keys=True, default=str)

    @property
    def abandoned(self) -> bool:
        expired = self.deadline is not None and time.monotonic() >= self.deadline
        return expired or (self.cancel is not None and self.cancel.is_set())


class BatchingGenerator:
    def __init__(
        self, inner: _Inner, *, max_batch_size: int = 16, timeout_error: type[Exception] = Timeout
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.inner = inner
        self.max_batch_size = max_batch_size
        self.timeout_error = timeout_error
        self.batches = 0  # generate calls made for queued requests (for tests and stats)
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._running: list[_Pending] = []  # the batch being generated now
        self._running_cancel = threading.Event()  # set when every request in it gave up
        self._expected = 0  # conversations the next batch waits for: the last batch's and the queued
        self._last_seconds = 0.0  # how long the last generate call took

    def generate(
        self,
        conversations: list[list[dict]],
        params: dict[str, Any],
        *,
        deadline: float | None = None,
        cancel: threading.Event | None = None,
    ) -> list[str]:
        if params.get("seed") is not None or len(conversations) >= self.max_batch_size:
            return self.inner.generate(conversations, params, deadline=deadline, cancel=cancel)
        item = _Pending(conversations, params, deadline, cancel)
        with self._cond:
            self._queue.append(item)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="ftctl-batcher", daemon=True)
                self._worker.start()
            self._cond.notify()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not item.done.wait(timeout):
            with self._cond:
                if item in self._running and all(other.abandoned for other in self._running):
                    self._running_cancel.set()  # nobody waits for this batch any more: stop it
            raise self.timeout_error("request timed out waiting for the model")
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _take_batch(self) -> list[_Pending]:
        with self._cond:
            while not self._queue:
                self._cond.wait()
            self._gather()
            first = self._queue.popleft()
            batch, size = [first], len(first.conversations)
            for item in list(self._queue):
                if item.key == first.key and size + len(item.conversations) <= self.max_batch_size:
                    self._queue.remove(item)
                    batch.append(item)
                    size += len(item.conversations)
        return batch

    def _gather(self) -> None:
        """Wait (holding the condition) for the last batch's clients to send again; see the module."""
        expected = min(self._expected, self.max_batch_size)
        if expected < 2:
            return
        deadline = time.monotonic() + min(GATHER_MAX_S, self._last_seconds / 4)
        while sum(len(item.conversations) for item in self._queue) < expected:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _run(self) -> None:
        while True:
            batch = [item for item in self._take_batch() if not item.abandoned]
            if not batch:
                continue
            deadlines = [item.deadline for item in batch]
            deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
            conversations = [c for item in batch for c in item.conversations]
            self.batches += 1
            with self._cond:
                self._running = batch
                self._running_cancel = cancel = threading.Event()
            started = time.monotonic()
            try:
                replies = self.inner.generate(
                    conversations, batch[0].params, deadline=deadline, cancel=cancel
                )
            except BaseException as exc:  # delivered to every waiting request
                for item in batch:
                    item.error = exc
                    item.done.set()
                continue
            finally:
                with self._cond:
                    self._running = []
                    queued = sum(len(item.conversations) for item in self._queue)
                    self._expected, self._last_seconds = (
                        len(conversations) + queued,
                        time.monotonic() - started,
                    )
            start = 0
            for item in batch:
                item.result = replies[start : start + len(item.conversations)]
                start += len(item.conversations)
                item.done.set()
