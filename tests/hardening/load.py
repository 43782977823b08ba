"""Closed-loop load on loopback for the hardening tests: every request is counted and classified.

Each client thread keeps one HTTP/1.1 keep-alive connection (`http.client`, so the test sees
exactly what happened on the wire: a refused connect, a reset, a cut body) and sends requests
back to back until told to stop, a request budget is spent, or the server refuses to connect.
Bodies ask the `add_mul` model (tests/serve/builders.py) for `a + b` and `a * b` of fresh random
rows, so every answer is checked to be whole and correct, not just a 200.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODEL = "m"
WIDTH = 4


@dataclass
class Counts:
    """What the clients saw, request by request."""

    sent: int = 0
    ok: int = 0  # 200 with a whole and correct body
    refused: int = 0  # connection refused at connect: nothing was sent
    overloaded: int = 0  # 503 with Retry-After
    deadline: int = 0  # 504, where the test sets deadlines
    failed: int = 0  # anything else: 5xx, a wrong or cut body, a reset, a time-out
    failures: collections.Counter = field(default_factory=collections.Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: str, detail: str = "", latency: float = 0.0) -> None:
        with self.lock:
            self.sent += outcome != "refused"
            setattr(self, outcome, getattr(self, outcome) + 1)
            if outcome == "failed":
                self.failures[detail] += 1
            if outcome in ("ok", "overloaded", "deadline"):
                self.latencies[outcome].append(latency)

    def percentile_ms(self, outcome: str, q: float) -> float:
        """The q-th percentile (0-100) of the answer times of `outcome`, in ms."""
        times = self.latencies.get(outcome) or [0.0]
        return float(np.percentile(times, q) * 1000)

    def table(self, title: str) -> str:
        """One line of counts, printed by every load test (pytest -s shows it)."""
        worst = max((max(v) for v in self.latencies.values() if v), default=0.0)
        return (
            f"{title}: sent {self.sent}, 200 {self.ok}, refused at connect {self.refused}, "
            f"503 with Retry-After {self.overloaded}, 504 {self.deadline}, failed {self.failed}"
            f"{' ' + dict(self.failures).__repr__() if self.failures else ''}; "
            f"slowest answer {worst * 1000:.0f} ms"
        )


def infer_body(rng: np.random.Generator, rows: int = 1) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A V2 JSON request for `add_mul`, with the sum and product it must come back with."""
    a = rng.normal(size=(rows, WIDTH)).astype(np.float32)
    b = rng.normal(size=(rows, WIDTH)).astype(np.float32)
    inputs = [
        {"name": n, "datatype": "FP32", "shape": [rows, WIDTH], "data": v.ravel().tolist()}
        for n, v in (("a", a), ("b", b))
    ]
    return json.dumps({"inputs": inputs}).encode(), a + b, a * b


def check_answer(body: bytes, total: np.ndarray, product: np.ndarray) -> str:
    """'' if `body` is the whole, correct answer, else what is wrong with it."""
    try:
        outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
        got_sum = np.asarray(outputs["sum"]["data"], np.float32).reshape(total.shape)
        got_product = np.asarray(outputs["product"]["data"], np.float32).reshape(product.shape)
    except (ValueError, KeyError, TypeError) as exc:
        return f"bad body ({type(exc).__name__})"
    if not (np.allclose(got_sum, total, rtol=1e-6) and np.allclose(got_product, product)):
        return "wrong answer"
    return ""


Checker = Callable[[bytes], str]


def add_mul_request(rng: np.random.Generator) -> tuple[bytes, Checker]:
    """The default request: fresh `add_mul` rows and the check of their answer."""
    body, total, product = infer_body(rng)
    return body, lambda answer: check_answer(answer, total, product)


class Client(threading.Thread):
    """One closed-loop client on its own keep-alive connection."""

    def __init__(self, port: int, counts: Counts, stop: threading.Event, *, seed: int,
                 budget: int = 10_000, path: str = f"/v2/models/{MODEL}/infer",
                 stop_when_refused: bool = True, timeout: float = 30.0,
                 make_request: Callable[[np.random.Generator], tuple[bytes, Checker]] | None = None,
                 deadlines_expected: bool = False) -> None:  # fmt: skip
        super().__init__(daemon=True, name=f"load-client-{seed}")
        self.port, self.counts, self.stop_event = port, counts, stop
        self.rng = np.random.default_rng(seed)
        self.budget, self.path = budget, path
        self.stop_when_refused, self.timeout = stop_when_refused, timeout
        self.make_request = make_request or add_mul_request
        self.deadlines_expected = deadlines_expected  # 504 counted apart, not as a failure
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        # As urllib3 does before reusing a pooled connection: one the server closed while it
        # was idle (readable: EOF) is replaced, not written to.
        sock = self.conn.sock if self.conn is not None else None
        if sock is not None and select.select([sock], [], [], 0)[0]:
            self._drop()
        if self.conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            conn.connect()  # ConnectionRefusedError here means nothing was sent
            self.conn = conn
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def one(self) -> str:
        """Send one request and classify it; returns the outcome."""
        body, check = self.make_request(self.rng)
        try:
            conn = self._connection()
        except ConnectionRefusedError:
            self.counts.add("refused")
            return "refused"
        started = time.monotonic()
        try:
            conn.request("POST", self.path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            self.counts.add("failed", type(exc).__name__)
            return "failed"
        latency = time.monotonic() - started
        if response.will_close:
            self._drop()
        if response.status == 200:
            problem = check(answer)
            if not problem:
                self.counts.add("ok", latency=latency)
                return "ok"
            self.counts.add("failed", problem)
            return "failed"
        if response.status == 503 and response.getheader("Retry-After"):
            self.counts.add("overloaded", latency=latency)
            return "overloaded"
        if response.status == 504 and self.deadlines_expected:
            self.counts.add("deadline", latency=latency)
            return "deadline"
        self.counts.add("failed", f"HTTP {response.status}")
        return "failed"

    def run(self) -> None:
        try:
            for _ in range(self.budget):
                if self.stop_event.is_set():
                    return
                if self.one() == "refused" and self.stop_when_refused:
                    return
        finally:
            self._drop()


def start_clients(port: int, clients: int, counts: Counts, stop: threading.Event,
                  **options) -> list[Client]:  # fmt: skip
    threads = [Client(port, counts, stop, seed=i, **options) for i in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def workers_of(master: int) -> set[int]:
    """The pids of the Gunicorn master's children (its workers)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (task / "children").read_text().split())
    return pids


def connections_held(pid: int, port: int) -> int:
    """How many established TCP connections to `port` process `pid` holds (/proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "01":  # 01: ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    held = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            held += os.readlink(fd) in inodes
    return held
