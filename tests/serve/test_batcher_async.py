"""Batcher.infer_async: the event loop queues requests, a runner thread batches and answers them."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from serve.core.batcher import Batcher, DeadlineExceeded, QueueFull


class _GatedRunner:
    """Doubles its input once the gate opens; records the batch sizes and the running threads."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.threads: list[str] = []
        self.fail_on = fail_on

    def __call__(self, feeds):
        self.gate.wait(10)
        x = feeds["x"]
        self.batches.append(x.shape[0])
        self.threads.append(threading.current_thread().name)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("bad row")
        return [x * 2]


async def _until_queued(batcher: Batcher, n: int) -> None:
    for _ in range(500):
        if len(batcher._queue) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(batcher._queue)} of {n} queued")


def test_requests_queued_while_busy_run_as_one_batch_in_the_runner_thread() -> None:
    runner = _GatedRunner()
    batcher = Batcher("m", "1", [runner], max_batch_size=64)
    inputs = [np.full((i % 3 + 1, 2), i, np.float32) for i in range(9)]

    async def main():
        first = asyncio.ensure_future(batcher.infer_async({"x": np.zeros((1, 2), np.float32)}))
        await _until_running(runner, batcher)
        rest = [asyncio.ensure_future(batcher.infer_async({"x": x})) for x in inputs]
        await _until_queued(batcher, len(inputs))
        runner.gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    np.testing.assert_array_equal(first[0], np.zeros((1, 2)))
    for x, out in zip(inputs, rest, strict=True):
        np.testing.assert_array_equal(out[0], x * 2)
    assert runner.batches == [1, sum(x.shape[0] for x in inputs)]
    assert all(name.startswith("batcher-m-1") for name in runner.threads), runner.threads
    batcher.close()


async def _until_running(runner: _GatedRunner, batcher: Batcher) -> None:
    for _ in range(500):
        if not batcher._free and not batcher._queue:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the first request never started")


def test_a_queued_request_past_its_deadline_is_dropped_with_504_reason() -> None:
    runner = _GatedRunner()
    batcher = Batcher("m", "1", [runner], max_batch_size=8)

    async def main():
        loop = asyncio.get_running_loop()
        busy = asyncio.ensure_future(batcher.infer_async({"x": np.ones((1, 2), np.float32)}))
        await _until_running(runner, batcher)
        deadline = time.monotonic() + 0.05
        with pytest.raises(DeadlineExceeded, match="deadline exceeded while queued"):
            await batcher.infer_async({"x": np.ones((1, 2), np.float32)}, deadline)
        assert not batcher._queue
        loop.call_soon(runner.gate.set)
        return await busy

    np.testing.assert_array_equal(asyncio.run(main())[0], np.full((1, 2), 2.0))
    assert runner.batches == [1]  # the expired request never ran
    batcher.close()


def test_a_failing_request_fails_alone_and_others_in_its_batch_get_answers() -> None:
    runner = _GatedRunner(fail_on=7.0)
    batcher = Batcher("m", "1", [runner], max_batch_size=8)

    async def main():
        busy = asyncio.ensure_future(batcher.infer_async({"x": np.zeros((1, 2), np.float32)}))
        await _until_running(runner, batcher)
        values = [1.0, 7.0, 3.0]
        tasks = [
            asyncio.ensure_future(batcher.infer_async({"x": np.full((1, 2), v, np.float32)}))
            for v in values
        ]
        await _until_queued(batcher, 3)
        runner.gate.set()
        await busy
        return await asyncio.gather(*tasks, return_exceptions=True)

    good, bad, other = asyncio.run(main())
    np.testing.assert_array_equal(good[0], np.full((1, 2), 2.0))
    np.testing.assert_array_equal(other[0], np.full((1, 2), 6.0))
    assert isinstance(bad, RuntimeError) and str(bad) == "bad row"
    batcher.close()


def test_a_full_queue_refuses_at_once() -> None:
    runner = _GatedRunner()
    batcher = Batcher("m", "1", [runner], max_batch_size=8, max_queue_size=1)

    async def main():
        busy = asyncio.ensure_future(batcher.infer_async({"x": np.zeros((1, 2), np.float32)}))
        await _until_running(runner, batcher)
        queued = asyncio.ensure_future(batcher.infer_async({"x": np.zeros((1, 2), np.float32)}))
        await _until_queued(batcher, 1)
        with pytest.raises(QueueFull, match="is full"):
            await batcher.infer_async({"x": np.zeros((1, 2), np.float32)})
        runner.gate.set()
        await busy
        await queued

    asyncio.run(main())
    assert runner.batches == [1, 1]
    batcher.close()


def test_a_cancelled_caller_s_queued_request_never_runs() -> None:
    runner = _GatedRunner()
    batcher = Batcher("m", "1", [runner], max_batch_size=8)

    async def main():
        busy = asyncio.ensure_future(batcher.infer_async({"x": np.zeros((1, 2), np.float32)}))
        await _until_running(runner, batcher)
        gone = asyncio.ensure_future(batcher.infer_async({"x": np.ones((3, 2), np.float32)}))
        await _until_queued(batcher, 1)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert not batcher._queue
        runner.gate.set()
        await busy

    asyncio.run(main())
    assert runner.batches == [1]  # the cancelled request's 3 rows never ran
    batcher.close()
