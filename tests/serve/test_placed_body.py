"""Large binary bodies on the event-loop path are copied once between the socket's chunks and
onnxruntime: read into one buffer where the tensor data starts 64-byte aligned, decoded as views
of it, and handed to onnxruntime as they are."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import tritonclient.http as httpclient

from serve.http import fast_path
from serve.protocol import v2
from serve.protocol.types import ProtocolError
from tests.serve.builders import identity, write_model


def _binary_body(x: np.ndarray, name: str = "x") -> tuple[bytes, int]:
    header = json.dumps(
        {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": x.nbytes}}], "id": "odd"}
    ).encode()  # fmt: skip
    return header + x.tobytes(), len(header)


def _receive(body: bytes, chunk: int):
    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive():
        part = parts.pop(0)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    return receive


@pytest.mark.parametrize("chunk", [1000, 65536, 10**7])
def test_binary_tensors_are_views_of_one_aligned_buffer(chunk):
    x = np.random.default_rng(0).random((64, 1024), dtype=np.float32)  # 256 KiB
    body, header_length = _binary_body(x)
    assert header_length % 4  # a header that leaves the tensor unaligned in the body
    placed = asyncio.run(
        fast_path._read_body(_receive(body, chunk), 10**9, str(len(body)), str(header_length))
    )
    assert isinstance(placed, memoryview) and placed.tobytes() == body
    data = v2.decode_infer(placed, str(header_length)).inputs[0].data
    np.testing.assert_array_equal(data, x)
    assert data.flags.aligned and data.ctypes.data % fast_path.TENSOR_ALIGNMENT == 0
    assert np.shares_memory(data, np.frombuffer(placed, np.uint8))  # no copy after the read


def test_small_or_json_bodies_are_read_as_before():
    x = np.ones((2, 3), np.float32)
    body, header_length = _binary_body(x)
    small = asyncio.run(fast_path._read_body(_receive(body, 7), 10**9, str(len(body)), "9"))
    assert isinstance(small, bytes) and small == body
    big = b'{"inputs": []}' + b" " * 100_000
    plain = asyncio.run(fast_path._read_body(_receive(big, 4096), 10**9, str(len(big)), None))
    assert isinstance(plain, bytes) and plain == big


@pytest.mark.parametrize("extra", [-1, 1])
def test_a_body_that_disagrees_with_its_content_length_is_refused(extra):
    body = bytes(100_000)
    receive = (
        _receive(body + b"x" * max(extra, 0), 4096) if extra > 0 else _receive(body[:-1], 4096)
    )
    with pytest.raises(ProtocolError) as caught:
        asyncio.run(fast_path._read_body(receive, 10**9, str(len(body)), "10"))
    assert caught.value.status == 400 and "Content-Length" in caught.value.message


def test_a_large_binary_request_with_an_odd_header_is_answered_right(tmp_path, tapeserve_server):
    write_model(tmp_path, "ident", identity(shape=("N", 4096)))
    server = tapeserve_server(tmp_path, workers=1)
    x = np.random.default_rng(1).random((64, 4096), dtype=np.float32)  # 1 MiB
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        item = httpclient.InferInput("x", list(x.shape), "FP32")
        item.set_data_from_numpy(x, binary_data=True)
        for request_id in ("a", "odd", "three"):  # headers of several lengths
            result = client.infer("ident", [item], request_id=request_id)
            np.testing.assert_array_equal(result.as_numpy("y"), x)
    finally:
        client.close()
