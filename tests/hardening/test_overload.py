"""Overload: a flood on a model with a small queue gets fast 503s with Retry-After (or 504 past a
request's deadline), never client time-outs or unbounded memory; the moment the flood stops,
normal requests succeed again."""

from __future__ import annotations

import json
import re
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.hardening.load import Counts, start_clients, wait_for, workers_of
from tests.serve import builders
from tests.support.server import RunningServer

CLIENTS = 32
DEADLINE_CLIENTS = 4  # of CLIENTS: each request carries a 5 ms deadline
FLOOD_S = 4.0
ROWS = 300  # busy model work per request: tens of ms on one core
QUEUE = 4
THREADS = 8


def _busy_request(expected: float, timeout_us: int | None, rng) -> tuple[bytes, object]:
    doc = {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [ROWS]}]}
    if timeout_us is not None:
        doc["parameters"] = {"timeout": timeout_us}

    def check(answer: bytes) -> str:
        try:
            value = json.loads(answer)["outputs"][0]["data"][0]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            return f"bad body ({type(exc).__name__})"
        return "" if np.isclose(value, expected, rtol=1e-4) else "wrong answer"

    return json.dumps(doc).encode(), check


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


@pytest.mark.slow
def test_flood_gets_fast_503s_and_the_server_recovers(tapeserve_server, tmp_path: Path) -> None:
    model = builders.busy()
    builders.write_model(tmp_path, "busy", model, config={"max_queue_size": QUEUE})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = float(session.run(None, {"n": np.array([ROWS])})[0].item())
    srv: RunningServer = tapeserve_server(tmp_path, workers=1, threads=THREADS)
    path = "/v2/models/busy/infer"
    (worker,) = workers_of(srv.process.pid)
    rss_before = _rss_mb(worker)

    counts, stop = Counts(), threading.Event()
    plain = partial(_busy_request, expected, None)
    with_deadline = partial(_busy_request, expected, 5000)
    clients = start_clients(
        srv.port, CLIENTS - DEADLINE_CLIENTS, counts, stop, path=path, make_request=plain
    )
    clients += [
        start_clients(
            srv.port,
            1,
            counts,
            stop,
            path=path,
            make_request=with_deadline,
            deadlines_expected=True,
        )[0]  # fmt: skip
        for _ in range(DEADLINE_CLIENTS)
    ]
    time.sleep(FLOOD_S)
    stop.set()
    for client in clients:
        client.join(60)
    assert not any(client.is_alive() for client in clients), "a client hung"
    rss_after = _rss_mb(worker)

    # Recovery: the very next requests, one after another, all succeed.
    recovered = [srv.post(path, data=plain(None)[0]) for _ in range(10)]
    statuses = [r.status_code for r in recovered]
    print(counts.table(f"flood: {CLIENTS} clients for {FLOOD_S:g} s, max_queue_size {QUEUE}"))
    print("answer times, ms   p50     p99     max")
    for outcome, label in (("ok", "200"), ("overloaded", "503"), ("deadline", "504")):
        print(
            f"  {label:<14}{counts.percentile_ms(outcome, 50):8.1f}"
            f"{counts.percentile_ms(outcome, 99):8.1f}{counts.percentile_ms(outcome, 100):8.1f}"
        )
    print(f"worker RSS {rss_before:.0f} MB before, {rss_after:.0f} MB after the flood; "
          f"first 10 requests after it: {statuses}")  # fmt: skip
    assert counts.failed == 0, counts.failures
    assert counts.overloaded > 0 and counts.ok > 0
    assert statuses == [200] * 10
    assert all(_busy_request(expected, None, None)[1](r.content) == "" for r in recovered)
    assert rss_after - rss_before < 100, "the queue is bounded: no memory growth under a flood"
    wait_for(
        lambda: 'tapeserve_queue_depth{model="busy",version="1"} 0.0' in srv.metrics(),
        "the queue to be empty",
    )
    rejected = re.search(
        r'tapeserve_rejected_requests_total\{model="busy",reason="queue_full"\} (\S+)',
        srv.metrics(),
    )
    assert rejected and float(rejected.group(1)) == counts.overloaded
