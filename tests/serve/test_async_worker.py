"""The two Gunicorn worker classes (`--worker-class async|gthread`) on a real server.

Both serve every endpoint, drain on SIGTERM without losing a request (readiness 503 at once,
listeners closed at once, in-flight requests answered with `Connection: close`, exit 0) and
answer Gunicorn's request-head limits as JSON. The async worker also keeps Gunicorn's heartbeat,
`max_requests` and boot-failure handling.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from click.testing import CliRunner

from serve.cli import main
from serve.settings import Settings
from tests.hardening.load import MODEL, check_answer, infer_body
from tests.serve import builders
from tests.support.raw_http import read_response
from tests.support.server import RunningServer, run_server, start_server

WORKER_CLASSES = ["async", "gthread"]
WORKER_CLASS_PATHS = {
    "async": "serve.workers.async_worker.AsyncWorker",
    "gthread": "serve.workers.gthread.DrainingThreadWorker",
}
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    # A queue delay keeps requests in the batcher for a while: a SIGTERM finds some there.
    config = {"max_batch_size": 16, "max_queue_delay_ms": 200}
    builders.write_model(repo, MODEL, builders.add_mul(), config=config)
    return repo


@pytest.fixture(scope="module", params=WORKER_CLASSES)
def server(request: pytest.FixtureRequest, repository: Path) -> Iterator[RunningServer]:
    args = ["--worker-class", request.param]
    with run_server(repository, workers=1, threads=4, extra_args=args) as srv:
        yield srv


def _worker_class(srv: RunningServer) -> str:
    return re.search(r"Using worker: (\S+)", srv.log()).group(1)


def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; read the whole answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _post_infer(conn: http.client.HTTPConnection, rng: np.random.Generator) -> tuple[int, str, str]:
    """POST one inference; returns (status, what is wrong with the answer or '', Connection)."""
    body, total, product = infer_body(rng)
    conn.request("POST", INFER, body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    problem = check_answer(answer, total, product) if response.status == 200 else answer.decode()
    return response.status, problem, response.getheader("Connection", "")


def _assert_clean(log: str) -> None:
    """No traceback in the server log (the message shows the first one in full)."""
    at = log.find("Traceback")
    assert at < 0, log[max(0, at - 1500) : at + 4000]


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_serves_inference_and_the_other_endpoints(server: RunningServer) -> None:
    worker_class = next(k for k, v in WORKER_CLASS_PATHS.items() if v == _worker_class(server))
    rng = np.random.default_rng(0)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    for _ in range(3):  # one kept-alive connection, several requests
        assert _post_infer(conn, rng)[:2] == (200, "")
    conn.close()
    assert server.get("/v2/health/live").status_code == 200
    assert server.get(f"/v2/models/{MODEL}").json()["platform"] == "onnxruntime_onnx"
    predict = server.post(f"/v1/models/{MODEL}:predict", json={"instances": [
        {"a": [1.0, 2.0, 3.0, 4.0], "b": [2.0, 2.0, 2.0, 2.0]}]})  # fmt: skip
    assert predict.status_code == 200, predict.text
    assert predict.json()["predictions"][0]["sum"] == [3.0, 4.0, 5.0, 6.0]
    missing = server.get("/v2/models/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    v2_counted = re.search(r"tapeserve_requests_total\{[^}]*protocol=\"v2\"", server.metrics())
    assert v2_counted, "inference is counted in /metrics"
    print(f"{worker_class}: inference, TF Serving, metadata, 404 and /metrics served")


def test_request_head_limits_are_json_errors(server: RunningServer) -> None:
    cases = [
        (b"GET /v2?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414,
         "Request Line is too large (5017 > 4094)"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431,
         "limit request headers fields size"),
        (b"GET /v2 HTTP/1.1\r\n" + b"".join(b"X-F-%d: v\r\n" % i for i in range(150)) + b"\r\n",
         431, "limit request headers fields"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "Bad Request"),
        (b"NOT-HTTP\r\n\r\n", 400, "Bad Request"),
    ]  # fmt: skip
    for data, status, fragment in cases:
        got, headers, body = _raw(server.port, data)
        assert got == status, (data[:40], got, body[:200])
        assert headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        assert fragment in json.loads(body)["error"], body
    assert server.get("/v2/health/ready").status_code == 200  # still serving
    _assert_clean(server.log())


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_sigterm_drains_requests_in_flight(
    tapeserve_server, repository: Path, worker_class: str
) -> None:
    grace = 10
    srv: RunningServer = tapeserve_server(
        repository, workers=1, threads=8,
        extra_args=["--worker-class", worker_class, "--graceful-timeout", str(grace)],
    )  # fmt: skip
    rng = np.random.default_rng(1)
    idle = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    idle.request("GET", "/v2/health/ready")
    first = idle.getresponse()
    first.read()
    assert first.status == 200  # the connection is now kept alive, idle at SIGTERM

    results: list[tuple[int, str, str]] = []

    def one_request(conn: http.client.HTTPConnection, seed: int) -> None:
        try:
            results.append(_post_infer(conn, np.random.default_rng(seed)))
        except (OSError, http.client.HTTPException) as exc:
            results.append((0, repr(exc), ""))

    # In flight at SIGTERM: a body still arriving, and requests waiting in the batcher queue.
    body, total, product = infer_body(rng)
    slow = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    slow.sendall(
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )
    connections = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30) for _ in range(6)]
    for conn in connections:
        conn.connect()  # connected before SIGTERM: their requests must be answered
    threads = [
        threading.Thread(target=one_request, args=(conn, seed))
        for seed, conn in enumerate(connections)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.1)  # most are queued for the 200 ms batch window by now
    started = time.monotonic()
    srv.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)

    assert _refused(srv.port), "the listener closes at once: new clients are refused"
    idle.request("GET", "/v2/health/ready")
    ready = idle.getresponse()
    ready.read()
    assert ready.status == 503, "readiness turns false at once"
    assert ready.getheader("Connection") == "close"
    slow.sendall(body[10:])
    status, headers, answer = read_response(slow)
    slow.close()
    assert (status, check_answer(answer, total, product)) == (200, "")
    if worker_class == "async":  # gthread settles keep-alive when a request starts
        assert headers["connection"] == "close"
    for thread in threads:
        thread.join(30)
    exit_status = srv.process.wait(grace + 10)
    elapsed = time.monotonic() - started
    print(f"{worker_class}: drained {len(results)} queued requests and a half-sent body, "
          f"exit {exit_status} after {elapsed:.1f} s")  # fmt: skip
    assert sorted(r[:2] for r in results) == [(200, "")] * len(threads), results
    assert exit_status == 0, srv.log()[-3000:]
    assert elapsed < grace, "the drain ends when the last request is answered"
    log = srv.log()
    _assert_clean(log)
    assert "SIGKILL" not in log and "SIGABRT" not in log, log[-3000:]


def test_async_is_the_default_and_hand_started_gunicorn_picks_by_env(repository: Path) -> None:
    assert Settings().worker_class == "async"
    with run_server(repository, plain_gunicorn=True) as srv:
        assert _worker_class(srv) == WORKER_CLASS_PATHS["async"]
    env = {"TAPESERVE_WORKER_CLASS": "gthread"}
    with run_server(repository, plain_gunicorn=True, env=env) as srv:
        assert _worker_class(srv) == WORKER_CLASS_PATHS["gthread"]
        assert srv.get("/v2/health/ready").status_code == 200


def test_unknown_worker_class_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="worker_class must be one of async, gthread, got 'x'"):
        Settings.from_env({"TAPESERVE_WORKER_CLASS": "x"})
    result = CliRunner().invoke(main, ["serve", "--worker-class", "eventlet"])
    assert result.exit_code == 2
    assert "'eventlet' is not one of 'async', 'gthread'" in result.output


def _first_answer(url: str, timeout: float = 120.0) -> requests.Response:
    """The first answer of a starting server, sending exactly one request that is answered:
    refused connections (no listener yet) are retried, an accepted one waits for the worker."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url)  # no timeout: it waits in the backlog until a worker serves
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_async_worker_keeps_the_heartbeat_and_restarts_after_max_requests(
    repository: Path,
) -> None:
    # --timeout 3: a worker that misses its heartbeat for 3 s is killed by the master. (A
    # worker booting on a busy machine can miss it too, for either class: only the idle
    # period of a running worker is judged.) No load probe: its helper process, started at
    # boot, can complain on stderr when a worker replaced this soon exits before it.
    # The answer that reaches --max-requests says "Connection: close", as Gunicorn's own workers
    # do: a client never sends on a kept-alive connection the stopping worker is about to close,
    # however long it waits before its next request (a loaded machine).
    env = {"GUNICORN_CMD_ARGS": "--max-requests 100"}
    args = ["--timeout", "3", "--no-load-probe"]
    with run_server(repository, extra_args=args, env=env, wait="none") as srv:
        assert _first_answer(srv.url + "/v2/health/live").status_code == 200  # request 1
        deadline = time.monotonic() + 120  # its model loaded (read in the log: no requests)
        while not re.search(r"model \S+ version 1 ready on", srv.log()):
            assert time.monotonic() < deadline, srv.log()[-3000:]
            time.sleep(0.1)
        idle_from = len(srv.log())
        time.sleep(4)  # the idle period judged below
        idle = srv.log()[idle_from:]
        with requests.Session() as session:  # one kept-alive connection, as clients do
            answers = [session.get(srv.url + "/v2/health/live") for _ in range(150)]
        deadline = time.monotonic() + 120  # the replacement's boot, however slow the machine
        while time.monotonic() < deadline and srv.log().count("Booting worker with pid") < 2:
            time.sleep(0.1)
        log = srv.log()
    assert "WORKER TIMEOUT" not in idle and "Booting worker" not in idle, idle
    assert [r.status_code for r in answers] == [200] * 150
    connection = [r.headers.get("Connection", "keep-alive") for r in answers]
    assert connection[:98] == ["keep-alive"] * 98, connection
    assert connection[98] == "close", "request 100, the limit, closes its connection"
    assert log.count("Maximum request limit of 100 exceeded") >= 1, log[-3000:]
    assert log.count("Booting worker with pid") >= 2, "the worker was replaced after 100 requests"
    _assert_clean(log)


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_app_that_cannot_be_built_stops_the_server(repository: Path, worker_class: str) -> None:
    env = {
        "TAPESERVE_ADMIN_TOKEN_FILE": "/nonexistent/token",
        "TAPESERVE_WORKER_CLASS": worker_class,
    }
    with pytest.raises(RuntimeError, match="server exited with 3") as failure:
        start_server(repository, plain_gunicorn=True, env=env, timeout=30)
    assert "cannot read token file" in str(failure.value)
    assert "Worker failed to boot" in str(failure.value)
