"""Every datatype round-trips through an Identity model per type, in every encoding."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.serve.conftest import DATATYPES


def sample(datatype: str) -> np.ndarray:
    """Two rows of three values that exercise each type's range."""
    if datatype == "BYTES":
        return np.array([[b"a", b"", "é".encode()], [b"xyz", b"\x00bin", b"q"]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.get(datatype)
    if dtype is not None:
        return np.array([[0.5, -1.25, 1e4], [np.inf, -np.inf, 3.0]], dtype=dtype)
    info = np.iinfo(np.dtype(datatype.lower()))
    return np.array([[info.min, info.max, 0], [1, info.max - 1, 7]], dtype=info.dtype)


@pytest.fixture(scope="module")
def client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("binary", [False, True])
def test_v2_round_trip(client, datatype, binary) -> None:
    x = sample(datatype)
    if datatype == "BYTES" and not binary:
        # JSON carries strings: valid UTF-8 only
        x = np.array([[b"a", b"", "é".encode()], [b"xyz", b"0", b"q"]], dtype=object)
    tensor = httpclient.InferInput("x", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer(
        f"id_{datatype.lower()}",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary)],
    )
    out = result.as_numpy("y")
    meta = result.get_output("y")
    assert meta["datatype"] == datatype and meta["shape"] == list(x.shape)
    if datatype == "BYTES":
        assert [v if isinstance(v, bytes) else v.encode() for v in out.ravel()] == list(x.ravel())
    else:
        assert out.dtype == x.dtype
        np.testing.assert_array_equal(out, x)


def _json_values(x: np.ndarray, datatype: str):
    if datatype == "BYTES":
        return [[{"b64": base64.b64encode(v).decode()} for v in row] for row in x]
    if datatype in ("FP16", "FP32", "FP64"):
        return x.astype(np.float64).tolist()
    return x.tolist()


@pytest.mark.parametrize("datatype", DATATYPES)
def test_tfserving_round_trip(server, datatype) -> None:
    x = sample(datatype)
    body = json.dumps({"instances": _json_values(x, datatype)})  # Infinity tokens allowed
    response = server.post(f"/v1/models/id_{datatype.lower()}:predict", data=body)
    assert response.status_code == 200, response.text
    predictions = json.loads(response.text)["predictions"]
    if datatype == "BYTES":
        got = [
            base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode()
            for row in predictions
            for v in row
        ]
        assert got == list(x.ravel())
    else:
        np.testing.assert_array_equal(np.array(predictions, dtype=x.dtype), x)
