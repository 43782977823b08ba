"""Property-based fuzzing of every decoder: whatever arrives, the only exception is
ProtocolError (a clean 4xx/5xx answer), and what decodes is self-consistent."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.protocol.binary import element_count, tensor_bytes
from serve.protocol.datatypes import V2_DATATYPES, V2_TO_NUMPY
from serve.protocol.encoding import decode_body
from serve.protocol.jsondata import output_data
from serve.protocol.tfserving import decode_predict
from serve.protocol.types import InferRequest, ProtocolError, TensorSpec
from serve.protocol.v2 import decode_infer
from serve.protocol.validate import validate_request
from tests.protocol.samples import assert_same, sample

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,  # tests write nothing outside temp folders
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
datatypes = st.sampled_from([*V2_DATATYPES, "fp32", "FLOAT"]) | st.text(max_size=5)
dims = st.integers(min_value=-2, max_value=5) | st.sampled_from([2**31, 2**40, 2**62, 2**64])
shapes = st.lists(dims, max_size=4) | json_values
nested_data = st.recursive(
    scalars, lambda inner: st.lists(inner, min_size=0, max_size=5), max_leaves=16
)
parameters = st.fixed_dictionaries(
    {},
    optional={
        "binary_data_size": st.integers(min_value=-4, max_value=64) | json_values,
        "binary_data": st.booleans() | json_values,
        "shared_memory_region": st.text(max_size=3),
    },
)
tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["x", "y", "s"]) | json_values,
        "datatype": datatypes,
        "shape": shapes,
        "data": nested_data | json_values,
        "parameters": parameters | json_values,
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=4) | json_values,
        "inputs": st.lists(tensors, max_size=3) | json_values,
        "outputs": st.lists(tensors, max_size=2) | json_values,
        "parameters": st.fixed_dictionaries(
            {},
            optional={
                "binary_data_output": st.booleans() | json_values,
                "timeout": st.integers(min_value=-5, max_value=10**7) | json_values,
            },
        )
        | json_values,
    },
)
specs = st.builds(
    TensorSpec,
    name=st.sampled_from(["x", "y", "s"]),
    datatype=st.sampled_from(V2_DATATYPES),
    shape=st.lists(st.sampled_from([-1, 0, 1, 2, 3]), max_size=3).map(tuple),
)


def _check_consistent(req: InferRequest) -> None:
    for item in req.inputs:
        assert isinstance(item.data, np.ndarray)
        assert item.data.shape == tuple(item.shape)
        assert item.data.size == element_count(item.shape)
        assert item.data.dtype == V2_TO_NUMPY[item.datatype]


def _decode_infer(body: bytes, header_length, raw_input=None, model=None) -> None:
    try:
        req = decode_infer(body, header_length, raw_input=raw_input)
    except ProtocolError as exc:
        assert exc.status == 400 and exc.message  # a clean client error, never a 5xx
        return
    _check_consistent(req)
    if model is not None:
        try:
            validate_request(req, model, [TensorSpec("y", "FP32", (-1,))], 4)
        except ProtocolError as exc:
            assert exc.status == 400 and exc.message


@FUZZ
@given(
    body=st.binary(max_size=300),
    header_length=st.none() | st.integers(min_value=-3, max_value=310) | st.text(max_size=4),
    raw_input=st.none() | specs,
)
def test_decode_infer_arbitrary_bytes(body: bytes, header_length, raw_input) -> None:
    _decode_infer(body, header_length, raw_input)


@FUZZ
@given(
    doc=requests,
    tail=st.binary(max_size=64),
    header=st.sampled_from(["none", "exact", "off"]),
    model=st.lists(specs, max_size=3),
)
def test_decode_infer_arbitrary_json(doc, tail: bytes, header: str, model) -> None:
    text = json.dumps(doc).encode()
    if header == "none":
        _decode_infer(text, None, model=model)
    else:
        length = len(text) if header == "exact" else max(0, len(text) - 1)
        _decode_infer(text + tail, length, model=model)


@FUZZ
@given(doc=json_values | requests, model=st.lists(specs, min_size=1, max_size=3))
def test_decode_infer_json_of_any_shape(doc, model) -> None:
    _decode_infer(json.dumps(doc).encode(), None, model=model)


predict_docs = st.fixed_dictionaries(
    {},
    optional={
        "instances": st.lists(
            nested_data
            | st.dictionaries(
                st.sampled_from(["x", "s", "b64"]), nested_data | st.text(max_size=6), max_size=3
            ),
            max_size=4,
        )
        | json_values,
        "inputs": nested_data
        | st.dictionaries(
            st.sampled_from(["x", "s", "b64", "q"]), nested_data | json_values, max_size=3
        ),
        "signature_name": st.sampled_from(["serving_default", "other"]) | json_values,
    },
)


@FUZZ
@given(
    doc=predict_docs | json_values,
    model=st.lists(specs, min_size=1, max_size=2),
    raw=st.binary(max_size=100),
)
def test_decode_predict_arbitrary_input(doc, model, raw: bytes) -> None:
    model = list({s.name: s for s in model}.values())
    for body in (json.dumps(doc).encode(), raw):
        try:
            req = decode_predict(body, model, max_batch_size=3)
        except ProtocolError as exc:
            assert exc.status == 400 and exc.message
            continue
        assert set(req.inputs) == {s.name for s in model}
        for spec in model:
            assert req.inputs[spec.name].dtype == V2_TO_NUMPY[spec.datatype]


def _mangle(data: bytes, cut: int, flip: int) -> bytes:
    if not data:
        return data
    data = bytearray(data[: max(1, len(data) - cut)])
    data[flip % len(data)] ^= 0x5A
    return bytes(data)


@FUZZ
@given(
    payload=st.binary(max_size=400),
    coding=st.sampled_from(["gzip", "deflate", "identity", "x-gzip", "gzip, deflate", "br", ""])
    | st.text(max_size=10),
    wrap=st.sampled_from(["gzip", "zlib", "none"]),
    cut=st.integers(min_value=0, max_value=20),
    flip=st.integers(min_value=0, max_value=1000),
    mangle=st.booleans(),
    limit=st.integers(min_value=0, max_value=500),
)
def test_decode_body_arbitrary_input(payload, coding, wrap, cut, flip, mangle, limit) -> None:
    body = {"gzip": gzip.compress, "zlib": zlib.compress, "none": bytes}[wrap](payload)
    if mangle:
        body = _mangle(body, cut, flip)
    try:
        out = decode_body(body, coding, limit)
    except ProtocolError as exc:
        assert exc.status in (400, 413, 415) and exc.message
        return
    assert len(out) <= limit


def _valid_body(datatype: str, shape: tuple[int, ...], binary: bool) -> tuple[dict, bytes]:
    arr = sample(datatype, shape)
    tensor: dict = {"name": "x", "datatype": datatype, "shape": list(shape)}
    blob = b""
    if binary:
        blob = bytes(tensor_bytes(arr, datatype))
        tensor["parameters"] = {"binary_data_size": len(blob)}
    else:
        tensor["data"] = output_data(arr)
    return {"id": "1", "inputs": [tensor], "outputs": [{"name": "y"}]}, blob


@FUZZ
@given(
    datatype=st.sampled_from(list(V2_TO_NUMPY)),
    shape=st.lists(st.integers(min_value=0, max_value=3), max_size=3).map(tuple),
    binary=st.booleans(),
    mutation=st.sampled_from(["none", "field", "header", "flip", "truncate", "extend"]),
    field=st.sampled_from(["name", "datatype", "shape", "data", "parameters", "id"]),
    value=json_values,
    position=st.integers(min_value=0, max_value=10**6),
    delta=st.integers(min_value=-8, max_value=8),
)
def test_decode_infer_mutated_valid_requests(
    datatype, shape, binary, mutation, field, value, position, delta
) -> None:
    """Start from a valid request (JSON or binary) and break one thing in it."""
    doc, blob = _valid_body(datatype, shape, binary)
    if mutation == "field":
        (doc if field == "id" else doc["inputs"][0])[field] = value
    header = json.dumps(doc).encode()
    body, length = header + blob, len(header) if binary else None
    if mutation == "header":
        length = max(0, (length or len(body)) + delta)
    elif mutation == "flip" and body:
        flipped = bytearray(body)
        flipped[position % len(body)] ^= 1 << (position % 8)
        body = bytes(flipped)
    elif mutation == "truncate":
        body = body[: position % (len(body) + 1)]
    elif mutation == "extend":
        body += bytes(abs(delta) + 1)
    if mutation == "none":
        req = decode_infer(body, length)
        assert_same(req.inputs[0].data, sample(datatype, shape))
        return
    _decode_infer(body, length, model=[TensorSpec("x", datatype, tuple(-1 for _ in shape))])
