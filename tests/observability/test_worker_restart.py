"""A SIGKILLed Gunicorn worker is replaced; its counts survive it, its live gauges die with it.

Four requests are left hanging mid-body so that they sit in flight in the workers; the worker
holding one of them is SIGKILLed. Afterwards the request counters must still count everything
the dead worker answered, and tapeserve_inflight_requests must drop exactly the requests the
dead worker held (prometheus_client's mark_process_dead in Gunicorn's child_exit hook).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.builders import identity, write_model
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.slow

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}


def _value(server: RunningServer, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`, from one scrape."""
    total = 0.0
    for family in text_string_to_metric_families(server.metrics()):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def _eventually(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _workers(master: int) -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.add(int(entry.name))
    return pids


def _owner(client: socket.socket, server_port: int, pids: set[int]) -> int:
    """The worker holding the server side of `client`'s connection (from /proc/net/tcp)."""
    client_port = client.getsockname()[1]
    local, remote = f":{server_port:04X}", f":{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(local) and fields[2].endswith(remote):
            inode = fields[9]
    assert inode, f"no server-side socket for client port {client_port}"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds socket inode {inode}")


def _hanging_request(port: int) -> socket.socket:
    """An inference request whose body never finishes arriving: it stays in flight."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"POST /v2/models/ident/infer HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    return sock


def _post(server: RunningServer, n: int) -> None:
    for _ in range(n):  # a fresh connection each, so the kernel spreads them over the workers
        response = requests.post(server.url + "/v2/models/ident/infer", json=BODY, timeout=30)
        assert response.status_code == 200, response.text


def test_killed_worker_keeps_its_counts_and_drops_its_gauges(tmp_path: Path) -> None:
    write_model(tmp_path, "ident", identity())
    server = start_server(tmp_path, workers=2)
    hanging: list[socket.socket] = []
    try:
        master = server.process.pid
        _post(server, 12)
        assert _value(server, "tapeserve_requests_total") == 12

        hanging = [_hanging_request(server.port) for _ in range(4)]
        _eventually(lambda: _value(server, "tapeserve_inflight_requests") == 4, "4 in flight")
        workers = _workers(master)
        assert len(workers) == 2
        owners = {sock: _owner(sock, server.port, workers) for sock in hanging}
        victim = owners[hanging[0]]
        survivors = [sock for sock in hanging if owners[sock] != victim]

        os.kill(victim, signal.SIGKILL)
        _eventually(
            lambda: victim not in _workers(master) and len(_workers(master)) == 2,
            "a replacement worker",
        )
        (replacement,) = _workers(master) - workers
        _eventually(
            lambda: (
                f"[{replacement}] [INFO] tapeserve.models: model ident version 1 ready"
                in server.log()
            ),
            "the replacement to load the model",
        )

        # Gauges: the dead worker's in-flight requests are gone, the survivor's remain.
        _eventually(
            lambda: _value(server, "tapeserve_inflight_requests") == len(survivors),
            f"in-flight gauge to drop to {len(survivors)}",
        )
        assert _value(server, "tapeserve_model_ready", model="ident") == 1
        # Counters: nothing the dead worker counted is lost, and counting goes on.
        assert _value(server, "tapeserve_requests_total") == 12
        _post(server, 10)
        assert _value(server, "tapeserve_requests_total") == 22
        assert _value(server, "tapeserve_inference_samples_total") == 22

        for sock in hanging:
            sock.close()
        _eventually(lambda: _value(server, "tapeserve_inflight_requests") == 0, "0 in flight")
        assert _value(server, "tapeserve_requests_total") >= 22
    finally:
        for sock in hanging:
            sock.close()
        server.stop()
