"""Concurrent requests share generate calls; each caller gets its own replies."""

from __future__ import annotations

import threading
import time

import pytest

from ftctl.backends.local import batching
from ftctl.backends.local.batching import BatchingGenerator, Timeout


class Recorder:
    """Echoes each conversation's last message; the first call blocks until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.cancels: list[threading.Event | None] = []

    def generate(self, conversations, params, *, deadline=None, cancel=None):  # type: ignore[no-untyped-def]
        self.calls.append(([c[-1]["content"] for c in conversations], params))
        self.cancels.append(cancel)
        self.entered.set()
        if len(self.calls) == 1:
            self.release.wait(10)
        if params.get("fail"):
            raise RuntimeError("boom")
        return [f"re: {c[-1]['content']}" for c in conversations]


def conv(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def run_all(batcher: BatchingGenerator, jobs: list[tuple[str, dict]]) -> dict[str, object]:
    results: dict[str, object] = {}

    def call(text: str, params: dict) -> None:
        try:
            results[text] = batcher.generate([conv(text)], params)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            results[text] = exc

    threads = [threading.Thread(target=call, args=job) for job in jobs]
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    return results, threads  # type: ignore[return-value]


def test_queued_requests_share_one_call_and_get_their_own_replies() -> None:
    inner = Recorder()
    batcher = BatchingGenerator(inner, max_batch_size=16)
    first = threading.Thread(target=batcher.generate, args=([conv("q0")], {"t": 1}))
    first.start()
    assert inner.entered.wait(5)
    results, threads = run_all(batcher, [(f"q{i}", {"t": 1}) for i in range(1, 8)])
    inner.release.set()
    for thread in [first, *threads]:
        thread.join(10)
    assert len(inner.calls) == 2
    assert sorted(inner.calls[1][0]) == [f"q{i}" for i in range(1, 8)]
    assert all(results[f"q{i}"] == [f"re: q{i}"] for i in range(1, 8))


def test_different_settings_are_not_mixed_and_batches_are_capped() -> None:
    inner = Recorder()
    batcher = BatchingGenerator(inner, max_batch_size=3)
    first = threading.Thread(target=batcher.generate, args=([conv("a0")], {"t": 1}))
    first.start()
    assert inner.entered.wait(5)
    jobs = [("a1", {"t": 1}), ("b1", {"t": 2}), ("a2", {"t": 1}), ("a3", {"t": 1}), ("a4", {"t": 1})]
    results, threads = run_all(batcher, jobs)
    inner.release.set()
    for thread in [first, *threads]:
        thread.join(10)
    for texts, params in inner.calls[1:]:
        assert len(texts) <= 3
        assert {t[0] for t in texts} == ({"a"} if params == {"t": 1} else {"b"})
    assert results["b1"] == ["re: b1"] and results["a4"] == ["re: a4"]


def test_seeded_requests_bypass_the_queue() -> None:
    inner = Recorder()
    inner.release.set()
    batcher = BatchingGenerator(inner)
    assert batcher.generate([conv("s")], {"seed": 3}) == ["re: s"]
    assert batcher.batches == 0


def test_an_error_reaches_every_request_of_the_batch() -> None:
    inner = Recorder()
    batcher = BatchingGenerator(inner)
    first = threading.Thread(target=batcher.generate, args=([conv("x")], {}))
    first.start()
    assert inner.entered.wait(5)
    results, threads = run_all(batcher, [("f1", {"fail": True}), ("f2", {"fail": True})])
    inner.release.set()
    for thread in [first, *threads]:
        thread.join(10)
    assert isinstance(results["f1"], RuntimeError) and isinstance(results["f2"], RuntimeError)


def test_timeout_and_cancel_when_nobody_waits() -> None:
    inner = Recorder()
    batcher = BatchingGenerator(inner)
    with pytest.raises(Timeout):
        batcher.generate([conv("slow")], {}, deadline=time.monotonic() + 0.2)
    cancel = inner.cancels[0]
    assert cancel is not None and cancel.is_set()
    inner.release.set()


class Timed:
    """Takes `seconds` per call; records how many conversations each call had."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []

    def generate(self, conversations, params, *, deadline=None, cancel=None):  # type: ignore[no-untyped-def]
        self.sizes.append(len(conversations))
        time.sleep(self.seconds)
        return [f"re: {c[-1]['content']}" for c in conversations]


def test_the_clients_of_a_batch_sending_again_share_the_next_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four clients that each send their next request as soon as their reply comes: the next call waits
    for the ones expected (the last batch's and the queued) instead of starting on the first to arrive."""
    monkeypatch.setattr(batching, "GATHER_MAX_S", 1.0)  # the window is then a quarter of the call: 0.1 s
    inner = Timed(0.4)
    batcher = BatchingGenerator(inner, max_batch_size=16)
    gate = threading.Barrier(4)
    replies: dict[int, list[list[str]]] = {n: [] for n in range(4)}

    def client(n: int) -> None:
        gate.wait()
        time.sleep(0.05 * n)  # round 1: the first alone, then the other three queue behind it
        replies[n].append(batcher.generate([conv(f"c{n} r1")], {}))
        time.sleep(0.01 * n)  # round 2: each sends again on its reply (clients 1-3 10 ms apart)
        replies[n].append(batcher.generate([conv(f"c{n} r2")], {}))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(30)
    assert replies == {n: [[f"re: c{n} r1"], [f"re: c{n} r2"]] for n in range(4)}
    # client 0 alone; then the three that queued behind it and client 0's second request, which the call
    # waits for (without waiting: 3, then 1); then the second requests of clients 1-3, together
    assert inner.sizes == [1, 4, 3]
