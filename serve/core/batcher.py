"""Dynamic batching per model version inside one worker. Knows nothing of HTTP.

A request that finds the model idle (no queue, an instance free) runs at once in the calling
thread: no hand-off, no waiting. Otherwise it queues; the moment an instance is free, the batch
is everything queued that shares the head request's non-batch shapes and dtypes (up to
`max_batch_size` rows), so a busy server forms large batches from whatever arrived during the
previous run. The thread that finishes with an instance takes that batch and hands it, with
the instance, to the request thread waiting at the head of the queue, which runs it and wakes
the others (leader/follower: one wake-up per request, no runner thread in between). Runner
threads serve `submit()` callers nobody waits on and, with `max_queue_delay_ms`, where every
request queues, wait at most that long for a batch to fill. Outputs are split back as views.

With a padding plan (`pad_variable_length_inputs`, serve.core.padding), requests whose inputs
differ only in their variable dimensions share batches too: padded to the batch's longest, run
once, each answer cut back to its own length; which requests join a batch follows a cost model
fitted on the runs, so padding is added only where it costs less than a run of its own.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np

from serve.core.padding import PaddingPlan, RunCost, size
from serve.observability import metrics

log = logging.getLogger("tapeserve.batcher")

Runner = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]
#: A runner that takes the batch's requests one by one (feeds of each, the latest deadline of the
#: batch, the parameters of each) and answers each with its outputs or the exception that failed
#: it alone: Python models, whose `execute` gets a list of requests as Triton's Python backend
#: gives it.
RequestsRunner = Callable[[list[dict[str, np.ndarray]], float | None, list[dict | None]], list]


class QueueFull(Exception):
    """The bounded queue has no room; the client should retry later (503 + Retry-After)."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before it could run (504)."""


_QUEUED, _RUNNING, _CANCELLED = 0, 1, 2


class _Pending:
    """One queued request and its answer; the waiting thread is woken exactly once.

    The signal is a plain lock held from creation and released when the answer is set: the
    cheapest wake-up CPython has (concurrent.futures.Future pays a Condition, a notify_all and
    a fresh waiter lock per request, which under load was the largest share of the GIL time).
    `state` changes only under the batcher's lock, so a waiter giving up and the runner taking
    the request cannot both win.
    """

    __slots__ = ("feeds", "rows", "key", "lengths", "deadline", "waited", "enqueued", "state",
                 "lead", "on_done", "parameters", "_signal", "_done", "_value",
                 "_error")  # fmt: skip

    def __init__(
        self,
        feeds: dict[str, np.ndarray],
        rows: int,
        key: tuple,
        deadline: float | None,
        waited: bool,
        on_done: Callable[[], object] | None = None,
        parameters: dict | None = None,
        lengths: tuple[int, ...] | None = None,
    ) -> None:
        self.feeds, self.rows, self.key, self.deadline = feeds, rows, key, deadline
        self.parameters = parameters  # read by RequestsRunners only (Python models)
        #: The request's length along each padded axis (None: not paddable, or no plan).
        self.lengths = lengths
        self.waited = waited  # a thread blocks in Batcher.infer for it: it can run its batch
        self.on_done = on_done  # called (in the runner's thread) once the answer is set
        self.lead: tuple[Runner, list[_Pending]] | None = None
        self.enqueued = time.monotonic()
        self.state = _QUEUED
        self._signal = threading.Lock()
        self._signal.acquire()
        self._done = False
        self._value: list | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the answer is set (or `timeout` seconds passed); True when it is."""
        if self._done:
            return True
        if not self._signal.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return False
        self._signal.release()  # later waits return at once
        return True

    def result(self, timeout: float | None = None) -> list:
        """The outputs (every model output, in order), or raise what the run raised."""
        if not self.wait(timeout):
            raise FutureTimeout()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def set_result(self, value: list) -> None:
        self._value = value
        self._done = True
        self._signal.release()
        if self.on_done is not None:
            self.on_done()

    def set_exception(self, error: BaseException) -> None:
        self._error = error
        self._done = True
        self._signal.release()
        if self.on_done is not None:
            self.on_done()


class _LoopWaker:
    """Wakes an event loop's awaiting requests from runner threads: one loop wake-up (a
    syscall) per burst of answers - a whole batch - instead of one per request."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: list[asyncio.Future] = []

    def post(self, future: asyncio.Future) -> None:
        """Mark `future` answered (any thread); the loop resolves it on its next turn."""
        with self._lock:
            self._ready.append(future)
            if len(self._ready) > 1:
                return  # a wake-up is already on its way
        self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for future in ready:
            if not future.done():
                future.set_result(None)


_WAKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker] = (
    weakref.WeakKeyDictionary()
)


def _waker(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    waker = _WAKERS.get(loop)
    if waker is None:
        waker = _WAKERS[loop] = _LoopWaker(loop)
    return waker


def _batch_key(feeds: dict[str, np.ndarray]) -> tuple:
    """Requests batch together only when every input agrees beyond the first dimension."""
    return tuple((name, a.shape[1:], a.dtype.str) for name, a in feeds.items())


class Batcher:
    """A bounded queue and `len(runners)` runner threads (one per model instance).

    `batching=False` (max_batch_size 0, or a fixed first dimension) still goes through the
    queue, metrics and deadlines, one request per run with its inputs as given.
    """

    def __init__(
        self,
        model: str,
        version: str,
        runners: Sequence[Runner],
        *,
        max_batch_size: int,
        max_queue_delay_ms: float = 0.0,
        max_queue_size: int = 1024,
        batching: bool = True,
        per_request: bool = False,
        padding: PaddingPlan | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue_delay = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.batching = batching and max_batch_size > 0
        #: The runners are RequestsRunners: requests are not concatenated, so any batch together.
        self.per_request = per_request
        #: Pad variable-length inputs to batch them (serve.core.padding); None: equal shapes only.
        self.padding = padding if self.batching and not per_request else None
        self._cost = RunCost() if self.padding is not None else None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._free = list(runners)  # instances not running a batch right now
        self._direct = not (self.batching and self.max_queue_delay > 0)
        labels = (model, version)
        self._queue_depth = metrics.QUEUE_DEPTH.labels(*labels)
        self._queue_duration = metrics.QUEUE_DURATION.labels(*labels)
        self._compute_duration = metrics.COMPUTE_DURATION.labels(*labels)
        self._batch_size = metrics.BATCH_SIZE.labels(*labels)
        self._samples = metrics.INFERENCE_SAMPLES.labels(*labels)
        self._batches = metrics.INFERENCE_BATCHES.labels(*labels)
        self._queue_depth.set(0)
        self._threads = [
            threading.Thread(
                target=self._run_forever, name=f"batcher-{model}-{version}-{i}", daemon=True
            )
            for i in range(len(runners))
        ]
        for thread in self._threads:
            thread.start()

    def infer(
        self,
        feeds: dict[str, np.ndarray],
        deadline: float | None = None,
        parameters: dict | None = None,
    ) -> list:
        """Run one request (alone when idle, else in a batch) and return its outputs.

        Every model output, in signature order. `deadline` is a time.monotonic() value;
        `parameters` reach RequestsRunners (tensor runners have no use for them). Raises
        QueueFull (no room), DeadlineExceeded (still queued at the deadline) or what the runner
        raised for this request.
        """
        rows = next(iter(feeds.values())).shape[0] if self.batching and feeds else 1
        pending = None
        with self._cond:
            if self._direct and not self._queue and self._free and not self._closed:
                runner = self._free.pop()
            else:
                pending = self._pending(feeds, rows, deadline, True, None, parameters)
                self._enqueue(pending)
        if pending is None:
            return self._run_direct(runner, feeds, rows, deadline, parameters)
        if deadline is None:
            self._await(pending, None)
        elif not self._await(pending, deadline - time.monotonic()):
            with self._cond:
                cancelled = pending.state == _QUEUED
                if cancelled:  # still queued: it will never run
                    pending.state = _CANCELLED
                    self._queue.remove(pending)
                    self._queue_depth.set(len(self._queue))
            if cancelled:
                metrics.REJECTED_REQUESTS.labels(self.model, "deadline").inc()
                raise DeadlineExceeded(
                    f"request deadline exceeded while queued for model {self.model} "
                    f"version {self.version}"
                )
            self._await(pending, None)  # already running (or leading): moments away
        return pending.result()

    def _await(self, pending: _Pending, timeout: float | None) -> bool:
        """Wait for the answer, or to be handed an instance and a batch to run (then run it)."""
        if timeout is not None:
            timeout = min(max(0.0, timeout), threading.TIMEOUT_MAX)
        if not pending._signal.acquire(timeout=-1 if timeout is None else timeout):
            return False
        if pending.lead is not None:
            runner, batch = pending.lead
            pending.lead = None
            self._run_batch(runner, batch)
        return True

    def _pending(
        self,
        feeds: dict[str, np.ndarray],
        rows: int,
        deadline: float | None,
        waited: bool,
        on_done: Callable[[], object] | None = None,
        parameters: dict | None = None,
    ) -> _Pending:
        """A queued request with the key of the requests it may share a batch with."""
        if self.per_request:
            return _Pending(feeds, rows, (), deadline, waited, on_done, parameters)
        if self.padding is not None:
            lengths = self.padding.lengths(feeds)
            if lengths is not None:
                key = self.padding.key(feeds, lengths)
                return _Pending(feeds, rows, key, deadline, waited, on_done, parameters, lengths)
        return _Pending(feeds, rows, _batch_key(feeds), deadline, waited, on_done, parameters)

    def _run_direct(
        self,
        runner: Runner,
        feeds: dict[str, np.ndarray],
        rows: int,
        deadline: float | None,
        parameters: dict | None,
    ) -> list:
        self._queue_duration.observe(0.0)
        started = time.perf_counter()
        try:
            if self.per_request:
                (result,) = runner([feeds], deadline, [parameters])  # type: ignore[arg-type,call-arg]
                if isinstance(result, BaseException):
                    raise result
                return result
            return list(runner(feeds))
        finally:
            elements = None
            if self.padding is not None:
                lengths = self.padding.lengths(feeds)
                elements = size(rows, lengths) if lengths is not None else None
            self._record(rows, time.perf_counter() - started, elements)
            self._release(runner)

    def _release(self, runner: Runner) -> None:
        """An instance finished: hand it with the next batch to the thread waiting at the head
        of the queue (it runs its own batch: one wake-up, no runner thread in between), else
        mark it free and let a runner thread take queued work."""
        with self._cond:
            head = self._queue[0] if self._queue else None
            if head is not None and self._direct and head.waited:
                batch = self._take()
                head.lead = (runner, batch)
            else:
                head = None
                self._free.append(runner)
                if self._queue:
                    self._cond.notify()
        if head is not None:
            head._signal.release()

    def submit(
        self,
        feeds: dict[str, np.ndarray],
        deadline: float | None = None,
        on_done: Callable[[], object] | None = None,
        parameters: dict | None = None,
    ) -> _Pending:
        """Queue one request; `.result(timeout)` of the returned handle gives its outputs.

        A runner thread runs it and then calls `on_done()` (in its own thread). `deadline` is
        a time.monotonic() value. Raises QueueFull when the queue is at its bound.
        """
        rows = next(iter(feeds.values())).shape[0] if self.batching and feeds else 1
        pending = self._pending(feeds, rows, deadline, False, on_done, parameters)
        with self._cond:
            return self._enqueue(pending)

    async def infer_async(
        self,
        feeds: dict[str, np.ndarray],
        deadline: float | None = None,
        parameters: dict | None = None,
    ) -> list:
        """`infer` for an asyncio caller: queue the request, await its batch, return its outputs.

        The event loop never blocks: a runner thread runs the batch and wakes the loop once for
        all the answers it just set. At `deadline` a request still queued is dropped
        (DeadlineExceeded).
        """
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        wake = functools.partial(_waker(loop).post, woken)
        pending = self.submit(feeds, deadline, wake, parameters)
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, pending)
        try:
            await woken
        except asyncio.CancelledError:
            self._withdraw(pending)  # the caller is gone: do not run it if it is still queued
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return pending.result()

    def _withdraw(self, pending: _Pending) -> bool:
        """Take a request out of the queue if it is still there (True), never to run."""
        with self._cond:
            if pending.state != _QUEUED:
                return False  # running (or done): moments away
            pending.state = _CANCELLED
            self._queue.remove(pending)
            self._queue_depth.set(len(self._queue))
        return True

    def _expire(self, pending: _Pending) -> None:
        """A queued request reached its deadline: drop it and answer DeadlineExceeded."""
        if not self._withdraw(pending):
            return
        metrics.REJECTED_REQUESTS.labels(self.model, "deadline").inc()
        pending.set_exception(
            DeadlineExceeded(
                f"request deadline exceeded while queued for model {self.model} "
                f"version {self.version}"
            )
        )

    def _enqueue(self, pending: _Pending) -> _Pending:
        """Append to the queue (the caller holds the lock); QueueFull at the bound or closed."""
        if self._closed:
            raise QueueFull(f"model {self.model} version {self.version} is shutting down")
        if len(self._queue) >= self.max_queue_size:
            metrics.REJECTED_REQUESTS.labels(self.model, "queue_full").inc()
            raise QueueFull(
                f"queue of model {self.model} version {self.version} is full "
                f"({self.max_queue_size} requests waiting); retry later"
            )
        self._queue.append(pending)
        self._queue_depth.set(len(self._queue))
        if self._free or not self._direct:  # else the busy instance's thread hands it on
            self._cond.notify()
        return pending

    def close(self) -> None:
        """Stop the runners after the queue drains."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- runner side ---------------------------------------------------------------------------

    def _compatible_rows(self, key: tuple) -> int:
        return sum(p.rows for p in self._queue if p.key == key)

    def _take(self) -> list[_Pending]:
        """Remove and return the next batch: the head plus every compatible request that fits."""
        head = self._queue.popleft()
        head.state = _RUNNING
        batch = [head]
        if head.lengths is not None and self._queue:
            return self._take_padded(head)
        if self.batching and self._queue:
            rows, keep = head.rows, collections.deque()
            for p in self._queue:
                if p.key == head.key and rows + p.rows <= self.max_batch_size:
                    p.state = _RUNNING
                    batch.append(p)
                    rows += p.rows
                else:
                    keep.append(p)
            self._queue = keep
        self._queue_depth.set(len(self._queue))
        return batch

    def _take_padded(self, head: _Pending) -> list[_Pending]:
        """The head plus the queued requests worth padding into its batch, nearest lengths
        first: a request joins when the padding it adds (elements beyond its own) costs no
        more than the fixed cost of a run of its own (serve.core.padding.RunCost); until that
        cost is known, only requests of the head's lengths join. With length buckets (all in the
        queue that share the head's key are in its buckets) every one joins."""
        if self.padding.buckets:  # type: ignore[union-attr]
            worth: float | None = math.inf
        else:
            worth = self._cost.overhead_elements() if self._cost is not None else None
        per_row = size(1, head.lengths)  # type: ignore[arg-type]
        candidates = sorted(
            (p for p in self._queue if p.key == head.key),
            key=lambda p: abs(size(1, p.lengths) - per_row),  # type: ignore[arg-type]
        )
        batch, rows, longest = [head], head.rows, head.lengths
        for p in candidates:
            if rows + p.rows > self.max_batch_size:
                continue
            joined = tuple(map(max, longest, p.lengths))  # type: ignore[arg-type]
            waste = size(rows + p.rows, joined) - size(rows, longest) - size(p.rows, p.lengths)  # type: ignore[arg-type]
            if waste <= 0 or (worth is not None and waste <= worth):
                p.state = _RUNNING
                batch.append(p)
                rows, longest = rows + p.rows, joined
                if rows >= self.max_batch_size:
                    break
        if len(batch) > 1:
            self._queue = collections.deque(p for p in self._queue if p.state == _QUEUED)
        self._queue_depth.set(len(self._queue))
        return batch

    def _next_batch(self) -> tuple[Runner, list[_Pending]] | None:
        """Wait for queued work and a free instance; returns both (None once closed)."""
        with self._cond:
            while not (self._queue and self._free):
                if self._closed and not self._queue:
                    return None
                self._cond.wait()
            runner = self._free.pop()
            if self.batching and self.max_queue_delay > 0:
                head = self._queue[0]
                until = head.enqueued + self.max_queue_delay
                while not self._closed and self._queue and self._queue[0] is head:
                    remaining = until - time.monotonic()
                    if remaining <= 0 or self._compatible_rows(head.key) >= self.max_batch_size:
                        break
                    self._cond.wait(remaining)
                if not self._queue:
                    return runner, []
            return runner, self._take()

    def _start(self, batch: list[_Pending]) -> list[_Pending]:
        """Fail requests whose deadline passed; the rest run."""
        now = time.monotonic()
        live = []
        for p in batch:
            if p.deadline is not None and now > p.deadline:
                metrics.REJECTED_REQUESTS.labels(self.model, "deadline").inc()
                p.set_exception(
                    DeadlineExceeded(
                        f"request deadline exceeded after {1000 * (now - p.enqueued):.1f} ms "
                        f"in the queue of model {self.model} version {self.version}"
                    )
                )
                continue
            self._queue_duration.observe(now - p.enqueued)
            live.append(p)
        return live

    def _run_forever(self) -> None:
        while True:
            work = self._next_batch()
            if work is None:
                return
            self._run_batch(*work)

    def _run_batch(self, runner: Runner, batch: list[_Pending]) -> None:
        """Run a batch taken from the queue, then pass the instance on."""
        try:
            batch = self._start(batch)
            if batch:
                self._execute(runner, batch)
        except BaseException as exc:  # never leave a waiter hanging
            log.exception("batcher %s/%s: unexpected error", self.model, self.version)
            for p in batch:
                if not p.done():
                    p.set_exception(exc)
        finally:
            self._release(runner)

    def _execute(self, runner: Runner, batch: list[_Pending]) -> None:
        if self.per_request:
            self._execute_requests(runner, batch)  # type: ignore[arg-type]
            return
        plan, longest = self.padding, None
        if len(batch) == 1:
            feeds = batch[0].feeds
            if plan is not None and batch[0].lengths is not None:
                longest = batch[0].lengths
        elif plan is not None and batch[0].lengths is not None:
            lengths = [p.lengths for p in batch]
            longest = tuple(map(max, *lengths)) if len(lengths) > 1 else lengths[0]
            feeds = plan.pad([p.feeds for p in batch], lengths, longest)  # type: ignore[arg-type]
        else:
            feeds = {
                name: np.concatenate([p.feeds[name] for p in batch]) for name in batch[0].feeds
            }
        rows = sum(p.rows for p in batch)
        elements = size(rows, longest) if longest is not None else None
        started = time.perf_counter()
        try:
            outputs = runner(feeds)
        except Exception as exc:
            self._record(rows, time.perf_counter() - started, elements)
            if len(batch) == 1:
                batch[0].set_exception(exc)
            else:  # isolate the faulty request: the others must still get their answers
                for p in batch:
                    self._execute(runner, [p])
            return
        self._record(rows, time.perf_counter() - started, elements)
        if len(batch) == 1:
            batch[0].set_result(outputs)
            return
        if any(out.ndim == 0 or out.shape[0] != rows for out in outputs) or (
            longest is not None and not plan.fits(outputs, longest)  # type: ignore[union-attr]
        ):
            for p in batch:  # outputs not aligned with the batch: run each on its own
                self._execute(runner, [p])
            return
        offset = 0
        for p in batch:
            end = offset + p.rows
            if longest is not None and p.lengths != longest:
                p.set_result(plan.cut(outputs, offset, end, p.lengths))  # type: ignore[union-attr,arg-type]
            else:
                p.set_result([out[offset:end] for out in outputs])
            offset = end

    def _execute_requests(self, runner: RequestsRunner, batch: list[_Pending]) -> None:
        deadlines = [p.deadline for p in batch]
        deadline = None if None in deadlines else max(deadlines)  # type: ignore[type-var]
        started = time.perf_counter()
        try:
            results = runner([p.feeds for p in batch], deadline, [p.parameters for p in batch])
        finally:
            self._record(sum(p.rows for p in batch), time.perf_counter() - started)
        for p, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                p.set_exception(result)
            else:
                p.set_result(result)

    def _record(self, rows: int, seconds: float, elements: int | None = None) -> None:
        if elements is not None and self._cost is not None:
            self._cost.observe(elements, seconds)
        self._compute_duration.observe(seconds)
        self._batch_size.observe(rows)
        self._samples.inc(rows)
        self._batches.inc()
