"""The binary tensor data extension both ways, size mismatches with byte offsets, raw-body mode."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from serve.protocol.binary import serialize_bytes, tensor_bytes
from serve.protocol.types import ProtocolError, TensorSpec
from serve.protocol.v2 import decode_infer, encode_infer
from tests.protocol.samples import DATATYPES, assert_same, sample


def _binary_body(tensors: list[tuple[str, str, np.ndarray]], **extra) -> tuple[bytes, int]:
    inputs, blobs = [], []
    for name, datatype, arr in tensors:
        blob = bytes(tensor_bytes(arr, datatype))
        inputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(arr.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = json.dumps({"inputs": inputs, **extra}).encode()
    return header + b"".join(blobs), len(header)


def _error(body: bytes, header_length, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_infer(body, header_length, **kw)
    return info.value


@pytest.mark.parametrize("datatype", DATATYPES)
def test_binary_request_round_trips_every_datatype(datatype: str) -> None:
    arr = sample(datatype, (2, 5))
    body, header_length = _binary_body([("x", datatype, arr), ("z", "INT32", sample("INT32"))])
    req = decode_infer(body, str(header_length))
    assert_same(req.inputs[0].data, arr)
    assert_same(req.inputs[1].data, sample("INT32"))


def test_binary_inputs_are_read_in_place() -> None:
    arr = np.arange(784, dtype=np.float32)
    body, header_length = _binary_body([("x", "FP32", arr.reshape(1, 784))])
    data = decode_infer(body, header_length).inputs[0].data
    assert not data.flags.owndata  # a view on the body, not a copy
    assert data.tobytes() == arr.tobytes()


@pytest.mark.parametrize("datatype", DATATYPES)
def test_binary_response_layout(datatype: str) -> None:
    arr = sample(datatype, (3, 2))
    body, headers = encode_infer(
        "m", "2", None, [("y", arr, True), ("j", np.ones(2, np.int8), False)]
    )
    assert headers["Content-Type"] == "application/octet-stream"
    header_length = int(headers["Inference-Header-Content-Length"])
    doc = json.loads(body[:header_length])
    binary, plain = doc["outputs"]
    blob = (
        serialize_bytes(arr)
        if datatype == "BYTES"
        else arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    )
    assert binary["parameters"] == {"binary_data_size": len(blob)} and "data" not in binary
    assert plain["data"] == [1, 1] and "parameters" not in plain
    assert body[header_length:] == blob


def test_mixed_json_and_binary_inputs() -> None:
    blob = np.array([1.5, 2.5], np.float32).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "a", "datatype": "INT16", "shape": [2], "data": [3, 4]},
                {
                    "name": "b",
                    "datatype": "FP32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                },
            ]
        }
    ).encode()
    req = decode_infer(header + blob, len(header))
    assert req.inputs[0].data.tolist() == [3, 4]
    assert req.inputs[1].data.tolist() == [1.5, 2.5]


def test_binary_sizes_that_do_not_add_up() -> None:
    arr = np.zeros((2, 3), np.float32)
    body, n = _binary_body([("x", "FP32", arr)])
    err = _error(body + b"\0" * 4, n)
    assert err.status == 400
    assert "add up to 24 bytes, but the body carries 28 bytes after the" in err.message
    err = _error(body[:-4], n)
    assert "binary data at byte offset" in err.message and "needs 24 bytes" in err.message
    doc = json.loads(body[:n])
    doc["inputs"][0]["parameters"]["binary_data_size"] = 20
    header = json.dumps(doc).encode()
    err = _error(header + b"\0" * 20, len(header))
    assert (
        "binary_data_size is 20 bytes, but shape [2, 3] of 6 elements x 4 bytes needs 24"
        in err.message
    )


def _bytes_header(count: int, size: int) -> bytes:
    tensor = {"name": "s", "datatype": "BYTES", "shape": [count]}
    return json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": size}}]}).encode()


def test_binary_bytes_errors_name_offsets() -> None:
    header = _bytes_header(2, 11)
    n = len(header)
    blob = struct.pack("<I", 1) + b"a" + struct.pack("<I", 100) + b"bb"
    err = _error(header + blob, n)
    assert (
        f"BYTES element 1 at byte offset {n + 5} declares 100 bytes, only 2 remain" in err.message
    )
    blob = struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + b"\0\0"
    err = _error(header + blob, n)
    assert "more BYTES elements than the shape holds (2)" in err.message
    assert f"byte offset {n + 9}" in err.message
    header = _bytes_header(3, 11)
    blob = struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + b"\0\0"
    err = _error(header + blob, len(header))
    assert f"BYTES element 2 at byte offset {len(header) + 9} needs a 4-byte length" in err.message
    assert "only 2 bytes remain" in err.message
    header = _bytes_header(3, 10)
    two_elements = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b"
    err = _error(header + two_elements, len(header))
    assert "binary data holds 2 BYTES elements, shape [3] needs 3" in err.message


def test_bool_binary_must_be_zero_or_one() -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "b",
                    "datatype": "BOOL",
                    "shape": [2],
                    "parameters": {"binary_data_size": 2},
                }
            ]
        }
    ).encode()
    assert decode_infer(header + b"\x01\x00", len(header)).inputs[0].data.tolist() == [True, False]
    assert "must be bytes 0 or 1" in _error(header + b"\x01\x07", len(header)).message


@pytest.mark.parametrize(
    "value,fragment",
    [
        ("abc", "must be a non-negative integer, got 'abc'"),
        ("-3", "must be a non-negative integer"),
        ("１２", "must be a non-negative integer"),
        (-3, "must be a non-negative integer, got -3"),
        ("999", "is 999, larger than the"),
    ],
)
def test_bad_header_length(value, fragment: str) -> None:
    err = _error(b'{"inputs": []}', value)
    assert err.status == 400 and fragment in err.message


def test_binary_size_without_header_length() -> None:
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4},
                }
            ]
        }
    ).encode()
    assert "has no Inference-Header-Content-Length header" in _error(body, None).message
    negative = body.replace(b": 4}", b": -4}")
    err = _error(negative, len(negative))
    assert "'binary_data_size' must be a non-negative integer" in err.message


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_body_is_the_single_input_with_batch_one(datatype: str) -> None:
    arr = sample(datatype, (1, 4))
    spec = TensorSpec("x", datatype, (-1, 4))
    req = decode_infer(bytes(tensor_bytes(arr, datatype)), "0", raw_input=spec)
    assert req.raw and req.binary_output and req.outputs is None and req.id is None
    assert req.inputs[0].shape == (1, 4)
    assert_same(req.inputs[0].data, arr)


def test_raw_body_shapes() -> None:
    body = np.arange(12, dtype=np.float32).tobytes()
    fixed = decode_infer(body, 0, raw_input=TensorSpec("x", "FP32", (3, 4))).inputs[0]
    assert fixed.shape == (3, 4)  # no batch dimension: the spec's own shape
    inferred = decode_infer(body, 0, raw_input=TensorSpec("x", "FP32", (-1, -1, 2))).inputs[0]
    assert inferred.shape == (1, 6, 2)
    err = _error(body, 0, raw_input=TensorSpec("x", "FP32", (-1, 5)))
    assert "raw body for input 'x': 12 elements, but shape [1, 5] needs 5" in err.message
    err = _error(body + b"\0", 0, raw_input=TensorSpec("x", "FP32", (-1, 3)))
    assert "49 bytes is not a whole number of FP32 elements (4 bytes each)" in err.message
    err = _error(body, 0, raw_input=TensorSpec("x", "FP32", (-1, -1, -1)))
    assert "more than one variable dimension" in err.message
    err = _error(body, 0, raw_input=TensorSpec("x", "FP32", (-1, -1, 5)))
    assert "12 elements cannot fill shape [1, -1, 5]" in err.message
    err = _error(body, 0)
    assert "needs a model with exactly one input" in err.message
    assert (
        _error(body, 0, raw_input=TensorSpec("x", "BF16", (-1,))).message == "BF16 is not supported"
    )
