"""Bodies written by tritonclient itself decode exactly; what we encode, tritonclient reads.

tritonclient is the client users already run against Triton; it must work unchanged.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest

from serve.protocol.encoding import decode_body, encode_body
from serve.protocol.v2 import HEADER_LENGTH, decode_infer, encode_infer
from tests.protocol.samples import DATATYPES, assert_same, sample
from tests.support.system import require_module


@pytest.fixture(scope="module")
def httpclient():
    return require_module("tritonclient.http")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_decoder_reads_tritonclient_requests(httpclient, binary: bool) -> None:
    tensors = {dt.lower(): (dt, sample(dt, (2, 3))) for dt in DATATYPES}
    inputs = []
    for name, (datatype, arr) in tensors.items():
        item = httpclient.InferInput(name, list(arr.shape), datatype)
        item.set_data_from_numpy(arr, binary_data=binary)  # BYTES samples are UTF-8 text
        inputs.append(item)
    outputs = [httpclient.InferRequestedOutput("y", binary_data=binary)]
    body, header_length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id="r7", timeout=2500
    )
    assert (header_length is not None) == binary
    req = decode_infer(body, header_length)
    assert req.id == "r7" and req.parameters["timeout"] == 2500
    assert [(o.name, o.binary) for o in req.outputs] == [("y", binary)]
    got = {i.name: i for i in req.inputs}
    for name, (datatype, arr) in tensors.items():
        assert got[name].datatype == datatype
        assert_same(got[name].data, arr)


def test_no_requested_outputs_means_all_binary(httpclient) -> None:
    item = httpclient.InferInput("x", [1, 2], "FP32")
    item.set_data_from_numpy(np.ones((1, 2), np.float32), binary_data=True)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([item])
    req = decode_infer(body, header_length)
    assert req.outputs is None and req.binary_output is True


def _finite(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind != "f":
        return arr
    return np.where(np.isfinite(arr), arr, np.asarray(0.75, arr.dtype))


@pytest.mark.parametrize("finite", [True, False], ids=["finite", "nan-inf"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_reads_encoded_responses(httpclient, binary: bool, finite: bool) -> None:
    """Finite floats take the fast JSON writer, NaN/Infinity the standard one: both must do."""
    tensors = {dt.lower(): sample(dt, (3, 2)) for dt in DATATYPES}
    if finite:
        tensors = {name: _finite(arr) for name, arr in tensors.items()}
    body, headers = encode_infer("m", "3", "r9", [(n, a, binary) for n, a in tensors.items()])
    length = headers.get(HEADER_LENGTH)
    result = httpclient.InferenceServerClient.parse_response_body(
        body, header_length=int(length) if length else None
    )
    assert result.get_response()["id"] == "r9"
    assert result.get_response()["model_version"] == "3"
    for name, arr in tensors.items():
        got = result.as_numpy(name)
        if arr.dtype == object and not binary:
            # tritonclient returns JSON BYTES as str, binary BYTES as bytes
            got = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(got)
        assert_same(got, arr)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_bodies_both_ways(httpclient, coding: str) -> None:
    arr = np.arange(2000, dtype=np.float32).reshape(4, 500)
    item = httpclient.InferInput("x", list(arr.shape), "FP32")
    item.set_data_from_numpy(arr, binary_data=True)
    body, header_length = httpclient.InferenceServerClient.generate_request_body([item])
    compressed = gzip.compress(body) if coding == "gzip" else zlib.compress(body)
    req = decode_infer(decode_body(compressed, coding, 1 << 20), header_length)
    assert_same(req.inputs[0].data, arr)
    out, headers = encode_infer("m", "1", None, [("y", arr, True)])
    wire, used = encode_body(out, f"{coding}, identity;q=0.5")
    assert used == coding and len(wire) < len(out)
    result = httpclient.InferenceServerClient.parse_response_body(
        wire, header_length=int(headers[HEADER_LENGTH]), content_encoding=used
    )
    assert_same(result.as_numpy("y"), arr)
