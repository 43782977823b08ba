"""Open Inference Protocol JSON bodies: every datatype both ways, flat and nested data, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve.protocol import jsondata
from serve.protocol.types import ProtocolError, TensorSpec
from serve.protocol.v2 import (
    decode_infer,
    encode_infer,
    model_metadata,
    model_ready,
    server_metadata,
)
from tests.protocol.samples import DATATYPES, assert_same, sample


def _json_data(arr: np.ndarray, nested: bool) -> list:
    values = arr.tolist() if nested else arr.reshape(-1).tolist()
    if arr.dtype == object:
        decode = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])
        values = decode(arr).tolist() if nested else decode(arr).reshape(-1).tolist()
    return values


def _body(*inputs: dict, **extra) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def _tensor(name="x", datatype="FP32", shape=(2,), data=(1, 2)) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": list(data)}


def _error(body: bytes, header_length=None, **kw) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_infer(body, header_length, **kw)
    return info.value


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_json_request_round_trips_every_datatype(datatype: str, nested: bool) -> None:
    arr = sample(datatype, (2, 3))
    body = _body(_tensor("x", datatype, arr.shape, _json_data(arr, nested)))
    req = decode_infer(body, None)
    assert [i.name for i in req.inputs] == ["x"]
    assert req.inputs[0].datatype == datatype
    assert req.inputs[0].shape == (2, 3)
    assert_same(req.inputs[0].data, arr)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_json_response_round_trips_every_datatype(datatype: str) -> None:
    arr = sample(datatype, (3, 2))
    body, headers = encode_infer("m", "1", "req-1", [("y", arr, False)])
    assert headers == {"Content-Type": "application/json"}
    doc = json.loads(body)
    assert doc["model_name"] == "m" and doc["model_version"] == "1" and doc["id"] == "req-1"
    (out,) = doc["outputs"]
    assert out == {**out, "name": "y", "datatype": datatype, "shape": [3, 2]}
    assert len(out["data"]) == 6  # flat, row-major
    # what the server writes, a client sends back unchanged
    req = decode_infer(_body(_tensor("y", datatype, out["shape"], out["data"])), None)
    assert_same(req.inputs[0].data, arr)


def test_nan_and_infinity_tokens_round_trip() -> None:
    body = (
        b'{"inputs":[{"name":"x","datatype":"FP64","shape":[4],'
        b'"data":[NaN,Infinity,-Infinity,1.5]}]}'
    )
    data = decode_infer(body, None).inputs[0].data
    out, _ = encode_infer("m", "1", None, [("x", data, False)])
    assert b'"data":[NaN,Infinity,-Infinity,1.5]' in out
    assert "id" not in json.loads(out)


def test_fp32_values_round_trip_exactly() -> None:
    arr = np.random.default_rng(0).standard_normal(784).astype(np.float32)
    out, _ = encode_infer("m", "1", None, [("y", arr, False)])
    data = json.loads(out)["outputs"][0]["data"]
    req = decode_infer(_body(_tensor("y", "FP32", [784], data)), None)
    assert req.inputs[0].data.tobytes() == arr.tobytes()


def test_id_parameters_and_requested_outputs_are_decoded() -> None:
    body = _body(
        _tensor(),
        id="abc",
        parameters={"timeout": 1500, "binary_data_output": True, "custom": "x"},
        outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
    )
    req = decode_infer(body, None)
    assert req.id == "abc"
    assert req.parameters["timeout"] == 1500 and req.parameters["custom"] == "x"
    assert req.binary_output is True and req.raw is False
    assert [(o.name, o.binary) for o in req.outputs] == [("a", True), ("b", False)]
    assert decode_infer(_body(_tensor()), None).outputs is None


def test_zero_element_tensors() -> None:
    req = decode_infer(_body(_tensor("x", "INT32", (0, 4), [])), None)
    assert req.inputs[0].data.shape == (0, 4) and req.inputs[0].data.dtype == np.int32
    body, _ = encode_infer("m", "1", None, [("y", np.zeros((0, 3), np.float32), False)])
    assert json.loads(body)["outputs"][0] == {
        "name": "y",
        "datatype": "FP32",
        "shape": [0, 3],
        "data": [],
    }


def test_uint64_and_int64_extremes_keep_precision() -> None:
    data = [0, 2**64 - 1, 2**63, 1]
    got = decode_infer(_body(_tensor("x", "UINT64", [4], data)), None).inputs[0].data
    assert got.tolist() == data
    data = [-(2**63), 2**63 - 1, 2**53 + 1, 0]
    assert (
        decode_infer(_body(_tensor("x", "INT64", [4], data)), None).inputs[0].data.tolist() == data
    )


def test_non_utf8_bytes_output_travels_binary() -> None:
    arr = np.array([b"\xff\xfe", b"ok"], dtype=object)
    body, headers = encode_infer("m", "1", None, [("y", arr, False)])
    header_len = int(headers["Inference-Header-Content-Length"])
    assert json.loads(body[:header_len])["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert body[header_len:] == b"\x02\x00\x00\x00\xff\xfe\x02\x00\x00\x00ok"


def test_metadata_bodies() -> None:
    specs = [TensorSpec("x", "FP32", (-1, 784))]
    doc = model_metadata(
        "mlp", ["1", "2"], "onnxruntime_onnx", specs, [TensorSpec("y", "FP32", (-1, 10))]
    )
    assert doc == {
        "name": "mlp",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert model_ready("mlp", True) == {"name": "mlp", "ready": True}
    assert server_metadata("tapeserve", "0.1", ["binary_tensor_data"])["extensions"] == [
        "binary_tensor_data"
    ]


ERRORS = [
    # (body, status, message fragment)
    (b"", 400, "not valid JSON"),
    (b"{", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b"[1]", 400, "must be a JSON object"),
    (b"[" * 50000, 400, "nested too deeply"),
    (b"{}", 400, "'inputs' must be an array"),
    (b'{"inputs": {}}', 400, "'inputs' must be an array"),
    (b'{"inputs": [1]}', 400, "inputs[0] must be an object, got a number"),
    (
        b'{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}',
        400,
        "'name' must be a string",
    ),
    (
        _body({"name": "x", "shape": [1], "data": [1]}),
        400,
        "input 'x': 'datatype' must be a string",
    ),
    (_body(_tensor(datatype="FP128")), 400, "input 'x': unknown datatype 'FP128'"),
    (_body(_tensor(datatype="BF16")), 400, "input 'x': BF16 is not supported"),
    (_body({"name": "x", "datatype": "FP32", "data": [1]}), 400, "'shape' must be an array"),
    (_body(_tensor(shape=[-1])), 400, "'shape' must hold non-negative integers, got [-1]"),
    (_body(_tensor(shape=[1.5])), 400, "'shape' must hold non-negative integers"),
    (_body(_tensor(shape=[True, 2])), 400, "'shape' must hold non-negative integers"),
    (_body(_tensor(shape=[1] * 33, data=[1])), 400, "rank 33 exceeds the limit of 32"),
    (_body(_tensor(shape=[2**62, 0], data=[])), 400, "shape [4611686018427387904, 0] is too large"),
    (_body(_tensor(shape=[1], data=json.loads("[" * 40 + "1" + "]" * 40))), 400, "deeper than 32"),
    (
        _body(_tensor(datatype="BYTES", shape=[1], data=json.loads("[" * 70 + '"a"' + "]" * 70))),
        400,
        "deeper than 32",
    ),
    (_body({"name": "x", "datatype": "FP32", "shape": [1]}), 400, "needs 'data' or 'parameters'"),
    (_body({**_tensor(), "data": 5}), 400, "'data' must be an array, got a number"),
    (_body(_tensor(data=[1, 2, 3])), 400, "'data' has 3 elements, shape [2] needs 2"),
    (
        _body(_tensor(shape=[2, 2], data=[[1, 2, 3, 4]])),
        400,
        "nested 'data' has shape [1, 4], but 'shape' is [2, 2]",
    ),
    (_body(_tensor(shape=[2, 2], data=[[1, 2], [3]])), 400, "not a rectangular array"),
    (_body(_tensor(data=[1, None])), 400, "FP32 data must be numbers, got null"),
    (_body(_tensor(data=[1, "2"])), 400, "FP32 data must be numbers, got string '2'"),
    (_body(_tensor(data=[1, {}])), 400, "FP32 data must be numbers, got an object"),
    (_body(_tensor(data=[True, False])), 400, "FP32 data must be numbers, got true/false"),
    (
        _body(_tensor(datatype="INT8", data=[1, 128])),
        400,
        "value 128 is out of range for INT8 [-128, 127]",
    ),
    (_body(_tensor(datatype="UINT32", data=[-1, 0])), 400, "value -1 is out of range for UINT32"),
    (_body(_tensor(datatype="UINT64", data=[2**64, 0])), 400, "out of range for UINT64"),
    (
        _body(_tensor(datatype="INT32", data=[1.5, 2])),
        400,
        "INT32 data must be integers, got float 1.5",
    ),
    (_body(_tensor(datatype="INT32", data=[1, 2.0])), 400, "integers, got 2.0 (write integers"),
    (
        _body(_tensor(datatype="INT64", data=[1, None])),
        400,
        "INT64 data must be integers, got null",
    ),
    (
        _body(_tensor(datatype="BOOL", data=[1, 0])),
        400,
        "BOOL data must be true or false, got int 1",
    ),
    (
        _body(_tensor(datatype="BOOL", data=[True, None])),
        400,
        "BOOL data must be true or false, got null",
    ),
    (_body(_tensor(datatype="BYTES", data=["a", 1])), 400, "BYTES data must be strings, got int 1"),
    (
        _body(_tensor(datatype="BYTES", data=["a", None])),
        400,
        "BYTES data must be strings, got null",
    ),
    (_body(_tensor(datatype="BYTES", data=["\ud800", "a"])), 400, "element 0 is not valid Unicode"),
    (
        _body(_tensor(datatype="BYTES", shape=[2, 2], data=[["a", "b"], ["c"]])),
        400,
        "BYTES data must be strings, got a nested array",
    ),
    (_body(_tensor(), id=5), 400, "'id' must be a string, got a number"),
    (_body(_tensor(), parameters=[]), 400, "request 'parameters' must be an object, got an array"),
    (_body(_tensor(), parameters={"timeout": -1}), 400, "'timeout' must be a non-negative integer"),
    (
        _body(_tensor(), parameters={"timeout": "5"}),
        400,
        "'timeout' must be a non-negative integer",
    ),
    (
        _body(_tensor(), parameters={"binary_data_output": 1}),
        400,
        "'binary_data_output' must be true or false",
    ),
    (_body(_tensor(), outputs={}), 400, "'outputs' must be an array"),
    (
        _body(_tensor(), outputs=[{"nam": "y"}]),
        400,
        "outputs[0] must be an object with a string 'name'",
    ),
    (
        _body(_tensor(), outputs=[{"name": "y"}, {"name": "y"}]),
        400,
        "output 'y' is requested more than once",
    ),
    (
        _body(_tensor(), outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
        400,
        "'binary_data' must be true or false",
    ),
    (
        _body(_tensor(), outputs=[{"name": "y", "parameters": {"classification": -2}}]),
        400,
        "'classification' must be a positive integer",
    ),
    (
        _body({**_tensor(), "parameters": {"shared_memory_region": "r"}}),
        400,
        "input 'x': shared memory is not supported",
    ),
    (
        _body({**_tensor(), "parameters": {"binary_data_size": 8}}),
        400,
        "has both 'data' and 'binary_data_size'",
    ),
]


@pytest.mark.parametrize("body,status,fragment", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_malformed_json_requests_name_the_problem(body: bytes, status: int, fragment: str) -> None:
    err = _error(body)
    assert err.status == status
    assert fragment in err.message, err.message


def _finite(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind != "f":
        return arr
    return np.where(np.isfinite(arr), arr, np.asarray(-2.5, arr.dtype))


@pytest.mark.parametrize("datatype", DATATYPES)
def test_fast_writer_matches_standard_writer(datatype: str) -> None:
    """Finite outputs take the orjson path; the values read back must equal json's."""
    arr = _finite(sample(datatype, (4, 3)))
    fast, _ = encode_infer("m", "1", None, [("y", arr, False)])
    data = json.loads(fast)["outputs"][0]["data"]
    standard = json.loads(jsondata.dumps(jsondata.output_data(arr)))
    if datatype == "BYTES":
        assert data == standard
    else:
        want = np.asarray(standard, dtype=arr.dtype)
        assert np.asarray(data, dtype=arr.dtype).tobytes() == want.tobytes()
    if datatype == "FP32":
        assert b"0.1," in fast  # shortest float32 text: the fast writer was used
    req = decode_infer(_body(_tensor("y", datatype, [4, 3], data)), None)
    assert_same(req.inputs[0].data, arr)
