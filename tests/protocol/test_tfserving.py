"""TF Serving REST bodies: row and columnar predict, b64 strings, errors, status and metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve.protocol.tfserving import decode_predict, encode_predict, model_metadata, model_status
from serve.protocol.types import ProtocolError, TensorSpec

X = TensorSpec("x", "FP32", (-1, 3))
S = TensorSpec("s", "BYTES", (-1,))
N = TensorSpec("n", "INT64", (-1, 2))


def _decode(doc, specs, **kw):
    return decode_predict(json.dumps(doc).encode(), specs, **kw)


def test_row_format_single_input() -> None:
    req = _decode({"instances": [[1, 2, 3], [4, 5, 6]]}, [X])
    assert req.row_format and req.signature_name is None
    assert req.inputs["x"].dtype == np.float32
    assert req.inputs["x"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_row_format_named_inputs_with_b64() -> None:
    doc = {
        "signature_name": "serving_default",
        "instances": [
            {"x": [1, 2, 3], "s": {"b64": "aGk="}, "n": [1, 2]},
            {"x": [4, 5, 6], "s": "caf\u00e9", "n": [3, 4]},
        ],
    }
    req = _decode(doc, [X, S, N])
    assert req.signature_name == "serving_default"
    assert req.inputs["s"].tolist() == [b"hi", "caf\u00e9".encode()]
    assert req.inputs["n"].dtype == np.int64 and req.inputs["n"].shape == (2, 2)


def test_columnar_format() -> None:
    req = _decode({"inputs": [[1, 2, 3]]}, [X])
    assert not req.row_format and req.inputs["x"].shape == (1, 3)
    req = _decode({"inputs": {"x": [[1, 2, 3]], "s": [{"b64": "AP8="}]}}, [X, S])
    assert req.inputs["s"].tolist() == [b"\x00\xff"]


def test_nan_and_infinity_are_accepted() -> None:
    req = decode_predict(b'{"instances": [[NaN, Infinity, -Infinity]]}', [X])
    values = req.inputs["x"][0]
    assert np.isnan(values[0]) and values[1] == np.inf and values[2] == -np.inf


ERRORS = [
    (b"nope", [X], "not valid JSON"),
    (b"[]", [X], "must be a JSON object"),
    (b"{}", [X], "needs 'instances' (row format) or 'inputs' (columnar)"),
    (b'{"instances": [[1,2,3]], "inputs": [[1,2,3]]}', [X], "not both"),
    (b'{"instances": []}', [X], "'instances' must be a non-empty array"),
    (b'{"instances": {"x": 1}}', [X], "'instances' must be a non-empty array"),
    (b'{"instances": [[1,2,3],[4,5]]}', [X], "not a rectangular array"),
    (b'{"instances": [[1,2]]}', [X], "input 'x': expected shape [-1, 3], got [1, 2]"),
    (b'{"instances": [[1,2,null]]}', [X], "FP32 data must be numbers, got null"),
    (
        b'{"instances": [[1,2,3]]}',
        [X, S],
        "the model has 2 inputs: each instance must be an object",
    ),
    (b'{"instances": [{"x": [1,2,3]}]}', [X, S], "instances[0]: missing input 's'"),
    (b'{"instances": [{"x": [1,2,3], "s": "a", "q": 1}]}', [X, S], "unknown input 'q'"),
    (b'{"instances": [{"x": [1,2,3], "s": "a"}, [1]]}', [X, S], "instances[1]: expected an object"),
    (b'{"inputs": [[1,2,3]]}', [X, S], "'inputs' must be an object of named tensors"),
    (b'{"inputs": {"x": [[1,2,3]]}}', [X, S], "'inputs': missing input 's'"),
    (b'{"inputs": {"s": [{"b64": "!!"}]}}', [S], 'element 0: "b64" value is not valid base64'),
    (b'{"inputs": {"s": [{"b64": 5}]}}', [S], '"b64" must be a string'),
    (b'{"inputs": {"s": [5]}}', [S], 'BYTES data must be strings or {"b64": ...} objects'),
    (b'{"inputs": {"x": {"b64": "AA=="}}}', [X], "only for string (BYTES) inputs"),
    (b'{"inputs": [[1.5, 2]]}', [N], "INT64 data must be integers, got float 1.5"),
    (b'{"signature_name": "other", "inputs": [[1,2,3]]}', [X], "signature_name 'other' not found"),
    (b'{"inputs": [1]}', [TensorSpec("b", "BF16", (-1,))], "BF16 is not supported"),
]


@pytest.mark.parametrize("body,specs,fragment", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_name_the_problem(body: bytes, specs, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_predict(body, specs)
    assert info.value.status == 400
    assert fragment in info.value.message, info.value.message


def test_batch_limit() -> None:
    with pytest.raises(ProtocolError, match="batch size 3 exceeds the model's max_batch_size of 2"):
        _decode({"instances": [[1, 2, 3]] * 3}, [X], max_batch_size=2)
    assert _decode({"instances": [[1, 2, 3]] * 3}, [X], max_batch_size=0).inputs["x"].shape == (
        3,
        3,
    )


def test_encode_row_format() -> None:
    y = np.array([[0.5, np.nan], [np.inf, -1.0]], np.float32)
    assert encode_predict({"y": y}, True) == b'{"predictions":[[0.5,NaN],[Infinity,-1.0]]}'
    labels = np.array([b"cat", b"\xff"], dtype=object)
    body = json.loads(encode_predict({"y": y, "label": labels}, True))
    assert body["predictions"][0]["label"] == "cat"
    assert body["predictions"][1]["label"] == {"b64": "/w=="}
    assert body["predictions"][1]["y"][0] == float("inf")


def test_encode_columnar_format() -> None:
    y = np.arange(4, dtype=np.int64).reshape(2, 2)
    assert json.loads(encode_predict({"y": y}, False)) == {"outputs": [[0, 1], [2, 3]]}
    scalar = np.float64(3.0)
    body = json.loads(encode_predict({"y": y, "t": np.asarray(scalar)}, False))
    assert body == {"outputs": {"y": [[0, 1], [2, 3]], "t": 3.0}}


def test_row_format_needs_a_shared_batch_dimension() -> None:
    with pytest.raises(ProtocolError, match="share dimension 0"):
        encode_predict({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}, True)
    with pytest.raises(ProtocolError, match="share dimension 0"):
        encode_predict({"a": np.asarray(1.0)}, True)


def test_status_and_metadata_bodies() -> None:
    status = model_status(
        [(1, "READY", ""), (2, "UNAVAILABLE", "bad graph"), ("3", "LOADING", None)]
    )
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            },
            {
                "version": "2",
                "state": "END",
                "status": {"error_code": "UNKNOWN", "error_message": "bad graph"},
            },
            {
                "version": "3",
                "state": "LOADING",
                "status": {"error_code": "OK", "error_message": ""},
            },
        ]
    }
    meta = model_metadata("mlp", 3, [X], [S])
    assert meta["model_spec"] == {"name": "mlp", "signature_name": "", "version": "3"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["x"] == {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "3", "name": ""}],
            "unknown_rank": False,
        },
        "name": "x",
    }
    assert sig["outputs"]["s"]["dtype"] == "DT_STRING"


def test_row_format_per_instance_scalars_of_every_kind() -> None:
    outputs = {
        "y": np.array([[1.5, 2], [3, 4]], np.float32),
        "c": np.array([1, 2], np.int64),
        "p": np.array([0.25, 0.5], np.float16),
        "b": np.array([True, False]),
    }
    assert json.loads(encode_predict(outputs, True)) == {
        "predictions": [
            {"y": [1.5, 2.0], "c": 1, "p": 0.25, "b": True},
            {"y": [3.0, 4.0], "c": 2, "p": 0.5, "b": False},
        ]
    }
