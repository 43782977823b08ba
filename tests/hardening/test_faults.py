"""Faults: a worker SIGKILLed under load is replaced and the service keeps answering; only the
requests in flight on that worker may fail, and the test counts them.

A gthread worker holds more connections than it has threads (kept-alive connections wait in its
poller for a free thread), and a closed-loop client has a request in flight on its connection
nearly all the time, so the bound is the connections the killed worker held, measured from
/proc at the kill.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.hardening.load import (
    MODEL,
    Counts,
    connections_held,
    start_clients,
    wait_for,
    workers_of,
)
from tests.serve import builders
from tests.support.server import RunningServer

CLIENTS = 32
THREADS = 4


@pytest.mark.slow
def test_sigkilled_worker_is_replaced_under_load(tapeserve_server, tmp_path: Path) -> None:
    config = {"max_batch_size": 32, "max_queue_delay_ms": 20}
    builders.write_model(tmp_path, MODEL, builders.add_mul(), config=config)
    srv: RunningServer = tapeserve_server(tmp_path, workers=2, threads=THREADS)
    master = srv.process.pid
    counts, stop = Counts(), threading.Event()
    clients = start_clients(srv.port, CLIENTS, counts, stop, stop_when_refused=False)
    try:
        wait_for(lambda: counts.ok >= 300, "the load to get going")
        victim = min(workers_of(master))
        held = connections_held(victim, srv.port)
        ok_at_kill, failed_at_kill = counts.ok, counts.failed
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(
            lambda: len(workers_of(master) - {victim}) == 2, "a replacement worker", timeout=60
        )
        replaced_after = time.monotonic() - killed_at
        # The replacement loads its models, then serves beside the survivor.
        wait_for(lambda: counts.ok >= ok_at_kill + 600, "answers after the kill", timeout=90)
        ok_at_end = counts.ok
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    print(counts.table(f"worker SIGKILL: {CLIENTS} clients, 2 workers x {THREADS} threads"))
    print(
        f"worker SIGKILL: the killed worker held {held} connections; "
        f"{counts.failed - failed_at_kill} requests failed; replacement forked after "
        f"{replaced_after:.1f} s; {ok_at_end - ok_at_kill} answered after the kill"
    )
    assert srv.process.poll() is None, "the master survives"
    # The survivor alone may answer the 600 before the replacement finished loading.
    wait_for(
        lambda: srv.get("/v2/health/ready").status_code == 200,
        "readiness once the replacement loaded",
        timeout=60,
    )
    assert failed_at_kill == 0
    assert counts.failed <= held, "only requests on the killed worker's connections may fail"
    assert set(counts.failures) <= {
        "RemoteDisconnected",
        "ConnectionResetError",
        "BrokenPipeError",
        "IncompleteRead",
    }, counts.failures  # dropped connections only: never a 5xx or a wrong answer
