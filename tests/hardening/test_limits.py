"""Limits on what a request may be: body size (declared, streamed, and decompressed), request line
and header size, JSON nesting depth, and element counts that contradict the declared shape.
Each gets a clear 4xx in the JSON error shape, and the server keeps serving."""

from __future__ import annotations

import gzip
import json
import re
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.hardening.load import MODEL, WIDTH, workers_of
from tests.serve import builders
from tests.support.server import RunningServer, run_server

LIMIT = 100_000  # --max-body-size
INFER = f"/v2/models/{MODEL}/infer"
ROW = {"name": "a", "datatype": "FP32", "shape": [1, WIDTH], "data": [1.0] * WIDTH}
GOOD = {"inputs": [ROW, {**ROW, "name": "b"}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("repo")
    builders.write_model(repo, MODEL, builders.add_mul(), config={"max_batch_size": 8})
    with run_server(repo, workers=1, threads=4, extra_args=["--max-body-size", str(LIMIT)]) as srv:
        yield srv


def _error(response: requests.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message
    return message


def _raw(srv: RunningServer, data: bytes, wait: float = 10.0) -> bytes:
    """Send raw bytes and read what comes back until the server closes or stays silent."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not re.search(rb"\r\n\r\n.*\}", answer, re.S):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
    return answer


def _worker_rss_mb(srv: RunningServer) -> float:
    (worker,) = workers_of(srv.process.pid)
    status = Path(f"/proc/{worker}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def test_declared_body_over_the_limit_is_refused_before_it_is_read(server) -> None:
    head = (
        f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {10 * 1024**3}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answer = _raw(server, head + b'{"inputs": [')  # 10 GiB announced, a few bytes sent
    waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"exceeds the 100000-byte limit" in answer
    print(f"413 for a 10 GiB Content-Length after {waited * 1000:.0f} ms, body never sent")


def test_streamed_body_over_the_limit(server) -> None:
    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to judge by
        yield b'{"inputs": [' + b" " * 60_000
        yield b" " * 60_000

    response = requests.post(server.url + INFER, data=chunks(), timeout=30)
    _error(response, 413, f"{LIMIT}-byte limit")


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compression_bomb_is_413_without_inflating_it(server, coding: str) -> None:
    plain = json.dumps(GOOD).encode() + b" " * (64 * 1024 * 1024)  # 64 MiB once inflated
    packed = gzip.compress(plain, 9) if coding == "gzip" else zlib.compress(plain, 9)
    assert len(packed) < LIMIT
    before = _worker_rss_mb(server)
    response = requests.post(
        server.url + INFER, data=packed, headers={"Content-Encoding": coding}, timeout=60
    )
    _error(response, 413, f"limit of {LIMIT} bytes after decompression")
    grown = _worker_rss_mb(server) - before
    print(f"{coding} bomb: {len(packed)} bytes -> 64 MiB: 413, worker RSS grew {grown:.1f} MB")
    assert grown < 50, "the bomb was inflated only up to the limit"


def test_request_line_and_headers_over_gunicorn_limits(server) -> None:
    _error(requests.get(server.url + "/v2/health/ready?" + "a" * 5000, timeout=30), 414,
           "Request Line is too large")  # fmt: skip
    big_field = {"X-Big": "a" * 9000}
    _error(requests.get(server.url + "/v2", headers=big_field, timeout=30), 431)
    many = {f"X-Field-{i}": "v" for i in range(150)}
    _error(requests.get(server.url + "/v2", headers=many, timeout=30), 431)


@pytest.mark.parametrize("depth", [1_000, 40_000])
def test_deep_json_nesting_is_400(server, depth: int) -> None:
    nested = "[" * depth + "1" + "]" * depth
    v2 = f'{{"inputs": [{{"name": "a", "datatype": "FP32", "shape": [1, 4], "data": {nested}}}]}}'
    _error(server.post(INFER, data=v2), 400)
    _error(server.post(f"/v1/models/{MODEL}:predict", data=f'{{"instances": {nested}}}'), 400)
    objects = depth // 4  # '{"a":' is 5 bytes: stay under the body limit
    deep_doc = '{"a":' * objects + "1" + "}" * objects
    _error(server.post(INFER, data=deep_doc), 400)


def test_element_counts_that_contradict_the_shape_are_400(server) -> None:
    short = {"inputs": [{**ROW, "data": [1.0] * (WIDTH - 1)}, {**ROW, "name": "b"}]}
    _error(server.post(INFER, json=short), 400, "'a'", "3 elements", f"[1, {WIDTH}]")
    huge_shape = {"inputs": [{**ROW, "shape": [2**31, 2**31]}, {**ROW, "name": "b"}]}
    _error(server.post(INFER, json=huge_shape), 400, "'a'")
    # Binary extension: the declared binary_data_size disagrees with the shape.
    header = {
        "inputs": [
            {**{k: v for k, v in ROW.items() if k != "data"},
             "parameters": {"binary_data_size": 8}},
            {**ROW, "name": "b"},
        ]
    }  # fmt: skip
    head = json.dumps(header).encode()
    response = server.post(
        INFER,
        data=head + struct.pack("<2f", 1.0, 2.0),
        headers={"Inference-Header-Content-Length": str(len(head)),
                 "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    _error(response, 400, "'a'")
    columns = {"inputs": {"a": [[1.0] * WIDTH, [1.0] * (WIDTH + 1)], "b": [[1.0] * WIDTH] * 2}}
    _error(server.post(f"/v1/models/{MODEL}:predict", json=columns), 400)


def test_server_still_serves_after_every_limit(server) -> None:
    response = server.post(INFER, json=GOOD)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs == {"sum": [2.0] * WIDTH, "product": [1.0] * WIDTH}
    assert "Traceback" not in server.log()
