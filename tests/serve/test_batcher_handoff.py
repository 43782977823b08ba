"""Batcher.infer under load: the request thread at the head of the queue runs the next batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serve.core.batcher import Batcher, DeadlineExceeded


class _GatedRunner:
    """Doubles its input after the gate opens; records batch sizes and the running threads."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.threads: list[str] = []

    def __call__(self, feeds):
        self.gate.wait(10)
        self.batches.append(feeds["x"].shape[0])
        self.threads.append(threading.current_thread().name)
        return [feeds["x"] * 2]


def _wait_queued(batcher: Batcher, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(batcher._queue) < n:
        assert time.monotonic() < deadline, f"only {len(batcher._queue)} of {n} queued"
        time.sleep(0.005)


def test_queued_requests_run_as_one_batch_in_a_request_thread() -> None:
    runner = _GatedRunner()
    batcher = Batcher("m", "1", [runner], max_batch_size=64)
    inputs = [np.full((i % 3 + 1, 2), i, np.float32) for i in range(9)]
    with ThreadPoolExecutor(10, thread_name_prefix="request") as pool:
        first = pool.submit(batcher.infer, {"x": np.zeros((1, 2), np.float32)})
        time.sleep(0.05)  # the first request runs directly and holds the instance at the gate
        futures = [pool.submit(batcher.infer, {"x": x}) for x in inputs]
        _wait_queued(batcher, len(inputs))
        runner.gate.set()
        np.testing.assert_array_equal(first.result(5)[0], np.zeros((1, 2)))
        for x, future in zip(inputs, futures, strict=True):
            np.testing.assert_array_equal(future.result(5)[0], x * 2)
    assert runner.batches == [1, sum(x.shape[0] for x in inputs)]
    # both batches ran in request threads: no runner thread was woken
    assert all(name.startswith("request") for name in runner.threads), runner.threads
    assert not batcher._queue and batcher._free == [runner]
    batcher.close()


def test_handoff_respects_max_batch_size_and_shapes() -> None:
    runner = _GatedRunner()
    batcher = Batcher("m", "1", [runner], max_batch_size=4)
    with ThreadPoolExecutor(6, thread_name_prefix="request") as pool:
        first = pool.submit(batcher.infer, {"x": np.zeros((1, 3), np.float32)})
        time.sleep(0.05)
        futures = []
        for shape in [(2, 3), (2, 3), (2, 3), (1, 5)]:
            futures.append(pool.submit(batcher.infer, {"x": np.ones(shape, np.float32)}))
            _wait_queued(batcher, len(futures))  # keep the queue order fixed
        runner.gate.set()
        first.result(5)
        shapes = [f.result(5)[0].shape for f in futures]
    assert shapes == [(2, 3), (2, 3), (2, 3), (1, 5)]
    assert runner.batches == [1, 4, 2, 1]
    batcher.close()


def test_queued_request_past_its_deadline_leaves_the_queue() -> None:
    runner = _GatedRunner()
    batcher = Batcher("m", "1", [runner], max_batch_size=8)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.infer, {"x": np.zeros((1, 2), np.float32)})
        time.sleep(0.05)
        late = pool.submit(
            batcher.infer, {"x": np.ones((1, 2), np.float32)}, time.monotonic() + 0.05
        )
        with pytest.raises(DeadlineExceeded, match="while queued for model m version 1"):
            late.result(5)
        assert not batcher._queue  # removed at once, not when an instance frees up
        runner.gate.set()
        first.result(5)
        after = batcher.infer({"x": np.ones((1, 2), np.float32)})
    np.testing.assert_array_equal(after[0], np.full((1, 2), 2.0))
    assert runner.batches == [1, 1]
    batcher.close()


def test_a_failing_batch_fails_only_its_request_and_the_instance_stays_usable() -> None:
    gate = threading.Event()

    def runner(feeds):
        gate.wait(10)
        if (feeds["x"] < 0).any():
            raise ValueError("negative input")
        return [feeds["x"] + 1]

    batcher = Batcher("m", "1", [runner], max_batch_size=8)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.infer, {"x": np.zeros((1, 2))})
        time.sleep(0.05)
        good = pool.submit(batcher.infer, {"x": np.ones((1, 2))})
        bad = pool.submit(batcher.infer, {"x": -np.ones((1, 2))})
        _wait_queued(batcher, 2)
        gate.set()
        first.result(5)
        np.testing.assert_array_equal(good.result(5)[0], np.full((1, 2), 2.0))
        with pytest.raises(ValueError, match="negative input"):
            bad.result(5)
    np.testing.assert_array_equal(batcher.infer({"x": np.ones((1, 2))})[0], np.full((1, 2), 2.0))
    batcher.close()
