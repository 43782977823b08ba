"""Every row of the status-code table (protocols.md section 3), against the real server."""

from __future__ import annotations

import gzip
import json
import threading
import time

import numpy as np
import pytest

from tests.serve import builders
from tests.support.server import start_server

X = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}


def infer(server, model: str, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return server.post(f"/v2/models/{model}/infer", data=data, **kwargs)


def assert_error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    message = response.json()["error"]
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"{not json", ["not valid JSON"]),
        (b"[1, 2]", ["JSON object"]),
        ({"inputs": [{**X, "shape": [1, 15]}]}, ["x", "15"]),
        ({"inputs": [{**X, "datatype": "INT32", "data": [0] * 16}]}, ["x", "FP32", "INT32"]),
        ({"inputs": [{**X, "name": "z"}]}, ["z"]),
        ({"inputs": []}, ["x"]),
        ({"inputs": [{**X, "data": [None] * 16}]}, ["null"]),
        ({"inputs": [{**X, "data": [0.0] * 15}]}, ["16"]),
        ({"inputs": [X], "outputs": [{"name": "nope"}]}, ["nope"]),
        ({"inputs": [X], "parameters": {"timeout": -5}}, ["timeout"]),
        ({"inputs": [{**X, "shape": [100, 16], "data": [0.0] * 1600}]}, ["max_batch_size"]),
    ],
)
def test_400_names_what_was_wrong(server, body, fragments) -> None:
    assert_error(infer(server, "mlp", body), 400, *fragments)


def test_400_binary_header_and_encoding(server) -> None:
    bad_length = infer(server, "mlp", json.dumps({"inputs": [X]}),
                       headers={"Inference-Header-Content-Length": "abc"})  # fmt: skip
    assert_error(bad_length, 400, "Inference-Header-Content-Length")
    corrupt = infer(server, "mlp", b"\x1f\x8bnot gzip", headers={"Content-Encoding": "gzip"})
    assert corrupt.status_code == 400, corrupt.text
    unknown = infer(server, "mlp", b"{}", headers={"Content-Encoding": "br"})
    assert_error(unknown, 415, "br")


def test_400_from_onnxruntime_spares_the_other_requests(server) -> None:
    """An index out of range fails inside ORT: that request gets 400, the rest their answers."""
    results: dict[int, object] = {}

    def send(i: int) -> None:
        index = 7 if i == 3 else i % 3
        body = {"inputs": [{"name": "i", "shape": [1], "datatype": "INT64", "data": [index]}]}
        results[i] = infer(server, "lookup", body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_error(results.pop(3), 400, "out of data bounds")
    for i, response in results.items():
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [float(i % 3)]
    assert server.get("/v2/health/live").status_code == 200


def test_404_unknown_model_version_and_route(server) -> None:
    assert_error(infer(server, "nope", {"inputs": [X]}), 404, "nope")
    assert_error(server.post("/v2/models/mlp/versions/9/infer", json={"inputs": [X]}), 404, "9")
    assert_error(server.get("/v2/models/nope"), 404, "nope")
    assert_error(server.get("/v2/nothing/here"), 404, "/v2/nothing/here")


def test_405_is_json_with_allow(server) -> None:
    response = server.get("/v2/models/mlp/infer")
    assert_error(response, 405, "GET", "POST")
    assert "POST" in response.headers["Allow"]
    assert_error(server.post("/v2/health/live"), 405, "GET")


def test_501_unimplemented(server) -> None:
    assert_error(server.post("/v1/models/mlp:regress", json={}), 501, "regress")


def test_503_for_an_unavailable_model(server) -> None:
    rejected = 'tapeserve_rejected_requests_total{model="broken",reason="unavailable"}'
    before = _metric(server, rejected)
    assert_error(infer(server, "broken", {"inputs": [X]}), 503, "broken", "unavailable")
    assert_error(infer(server, "badconfig", {"inputs": [X]}), 503, "max_batch_size")
    counted = 'tapeserve_requests_total{code="503",model="broken",protocol="v2",version=""}'
    assert counted in server.metrics()
    assert _metric(server, rejected) == before + 1
    assert server.post("/v1/models/broken:predict", json={"instances": [[0]]}).status_code == 503
    assert _metric(server, rejected) == before + 2


def _busy_body(n: int, **parameters) -> dict:
    body = {"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [n]}]}
    if parameters:
        body["parameters"] = parameters
    return body


def _metric(server, line_prefix: str) -> float:
    for line in server.metrics().splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_metric(server, line_prefix: str, value: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _metric(server, line_prefix) < value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{line_prefix} never reached {value} in {timeout:g} s")
        time.sleep(0.01)


def _occupy(server, model: str) -> threading.Thread:
    """Keep `model`'s runner busy (hundreds of ms): returns once that request is running."""
    started = f'tapeserve_queue_duration_seconds_count{{model="{model}",version="1"}}'
    before = _metric(server, started)
    body = _busy_body(60_000, timeout=60_000_000)  # its own deadline overrides the default
    thread = threading.Thread(target=infer, args=(server, model, body))
    thread.start()
    _wait_metric(server, started, before + 1)
    return thread


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A server whose `gated` model (one instance, max_queue_size 1) runs each request only once
    the test opens its gate: busy for exactly as long as the test needs."""
    root = tmp_path_factory.mktemp("gated")
    gate = builders.write_gated_model(root, "gated", "execute", {"max_queue_size": 1})
    srv = start_server(root, extra_args=["--allow-python-models"])
    yield srv, gate
    srv.stop()


def test_503_queue_full_with_retry_after(gated) -> None:
    server, gate = gated
    x = {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}],
         "parameters": {"timeout": 120_000_000}}  # fmt: skip
    answers: list = []
    started = 'tapeserve_queue_duration_seconds_count{model="gated",version="1"}'
    before = _metric(server, started)
    busy = threading.Thread(target=lambda: answers.append(infer(server, "gated", x)))
    busy.start()
    _wait_metric(server, started, before + 1)  # running: its instance waits at the gate
    queued = threading.Thread(target=lambda: answers.append(infer(server, "gated", x)))
    queued.start()
    _wait_metric(server, 'tapeserve_queue_depth{model="gated",version="1"}', 1)
    full = infer(server, "gated", x)  # max_queue_size 1: no room
    gate.touch()
    busy.join()
    queued.join()
    assert_error(full, 503, "queue", "full")
    assert full.headers["Retry-After"] == "1"
    assert _metric(server, 'tapeserve_rejected_requests_total{model="gated",reason="queue_full"}')
    assert [a.status_code for a in answers] == [200, 200]  # the two it took were answered


def test_504_deadline_from_request_and_config(server) -> None:
    busy = _occupy(server, "busy")
    late = infer(server, "busy", _busy_body(1, timeout=1000))  # 1 ms, behind a long run
    busy.join()
    assert_error(late, 504, "deadline")
    busy = _occupy(server, "busy_timeout")
    late = infer(server, "busy_timeout", _busy_body(1))  # default_timeout_ms 50
    busy.join()
    assert_error(late, 504, "deadline")
    assert 'tapeserve_rejected_requests_total{model="busy",reason="deadline"}' in server.metrics()


def test_413_body_limits(tapeserve_server, small_repository) -> None:
    srv = tapeserve_server(small_repository, extra_args=["--max-body-size", "2000"])
    big = {"inputs": [{**X, "shape": [20, 16], "data": [0.123456] * 320}]}
    assert_error(infer(srv, "mlp", big), 413, "2000")
    bomb = gzip.compress(json.dumps(big).encode() + b" " * 100_000)
    assert len(bomb) < 2000
    assert_error(infer(srv, "mlp", bomb, headers={"Content-Encoding": "gzip"}), 413)
    assert infer(srv, "mlp", {"inputs": [X]}).status_code == 200


def test_malformed_bodies_never_500(server) -> None:
    rng = np.random.default_rng(3)
    bodies = [rng.bytes(int(n)) for n in rng.integers(0, 300, 20)]
    bodies += [b'{"inputs": [{"name": "x", "shape": "x"}]}', b'{"inputs": {}}', b"\xff\xfe"]
    bodies += [b'{"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": {}}]}']
    for body in bodies:
        response = infer(server, "mlp", body)
        assert 400 <= response.status_code < 500, (body, response.text)
        assert "error" in response.json()
    for body in bodies:
        response = server.post("/v1/models/mlp:predict", data=body)
        assert 400 <= response.status_code < 500, (body, response.text)
