"""The numeric fast path of V2 JSON decoding (simdjson straight into an array) gives exactly what
the general decoder (orjson + numpy) gives: the same dtype and bytes, or the same 400."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

from serve.protocol import jsondata, v2
from serve.protocol.types import ProtocolError

N = 9000  # elements: even one-digit values make a body above jsondata.FAST_MIN_BYTES


@contextlib.contextmanager
def general_only():
    saved = jsondata._simdjson
    jsondata._simdjson = None
    try:
        yield
    finally:
        jsondata._simdjson = saved


def body(values: list[str], datatype: str = "FP32", shape=None, extra: str = "") -> bytes:
    shape = [len(values)] if shape is None else shape
    tensor = f'"name":"x","shape":{json.dumps(shape)},"datatype":"{datatype}"'
    text = '{"inputs":[{' + tensor + ',"data":[' + ",".join(values) + "]}]" + extra + "}"
    assert len(text) > jsondata.FAST_MIN_BYTES
    return text.encode()


def decode_both(data: bytes):
    """(fast, general): the decoded array or the ProtocolError message of each path."""
    out = []
    for context in (contextlib.nullcontext(), general_only()):
        with context:
            try:
                out.append(v2.decode_infer(data, None).inputs[0].data)
            except ProtocolError as exc:
                out.append(f"{exc.status} {exc.message}")
    return out


def assert_same(data: bytes) -> None:
    fast, general = decode_both(data)
    if isinstance(general, str):
        assert fast == general
        return
    assert fast.dtype == general.dtype and fast.shape == general.shape
    assert fast.tobytes() == general.tobytes()


def test_the_fast_path_is_taken_for_a_large_flat_numeric_array(monkeypatch):
    calls = []
    real = jsondata._fast_numeric
    monkeypatch.setattr(jsondata, "_fast_numeric", lambda *a: calls.append(1) or real(*a))
    v2.decode_infer(body(["0.5"] * N), None)
    assert calls == [1]


def _halfway_float32(rng, n):
    """Decimal strings at or next to the midpoint of two adjacent float32 values: where parsing
    straight to float32 and parsing to double first round differently."""
    f = rng.random(n).astype(np.float32) * np.float32(100)
    mid = (f.astype(np.float64) + np.nextafter(f, np.float32(1e9)).astype(np.float64)) / 2
    return [f"{m:.25e}" for m in mid] + [repr(float(m)) for m in mid]


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "FP64"])
def test_float_values_are_bit_identical(datatype):
    rng = np.random.default_rng(0)
    cases = [[f"{v:.{digits}g}" for v in rng.uniform(-1e3, 1e3, N)] for digits in (3, 9, 17, 25)]
    cases.append(_halfway_float32(rng, N // 2))
    cases.append([str(v) for v in rng.integers(-(2**40), 2**40, N)])
    cases.append(["-0", "0", "-0.0", "1e-45", "1e-46", "3.4028235e38", "3.4028236e38", "65504",
                  "65520", "1E5", "-2.5e-3"] * 300)  # fmt: skip
    for values in cases:
        assert_same(body(values, datatype))


@pytest.mark.parametrize(
    "datatype", ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
)
def test_integer_values_are_identical(datatype):
    info = np.iinfo(jsondata.V2_TO_NUMPY[datatype])
    rng = np.random.default_rng(1)
    low, high = max(int(info.min), -(2**62)), min(int(info.max), 2**62)
    assert_same(body([str(v) for v in rng.integers(low, high, N, endpoint=True)], datatype))
    assert_same(body([str(int(info.max))] * N, datatype))


@pytest.mark.parametrize(
    "last, datatype",
    [
        ("1.5", "INT32"),  # a float in integer data
        ("300", "INT8"),  # out of range
        ("-1", "UINT8"),
        ("99999999999999999999", "INT64"),  # beyond 64 bits
        ("9007199254740993", "FP32"),  # an integer a double cannot hold exactly
        ("true", "FP32"),
        ('"a"', "FP32"),
        ("null", "FP32"),
        ("NaN", "FP32"),  # a token only the standard library reads
        ("Infinity", "FP64"),
        ("1e400", "FP64"),
        ("[1]", "FP32"),  # ragged
        ("1", "BOOL"),
        ("01", "FP32"),  # not JSON
        ("1.", "FP32"),
        ("+1", "FP32"),
    ],
)
def test_odd_data_gets_the_general_decoders_answer(last, datatype):
    assert_same(body(["1"] * (N - 1) + [last], datatype))


def test_nested_duplicate_keys_and_shape_mismatch_get_the_general_answer():
    rows = ["[" + ",".join(["0.25"] * 90) + "]"] * 100
    assert_same(body(rows, shape=[100, 90]))
    assert_same(body(rows, shape=[9000]))
    assert_same(body(["0.5"] * N, extra=',"id":"a","id":"b"'))  # orjson keeps the last
    assert_same(body(["0.5"] * N, shape=[N - 1]))
    fast, general = decode_both(
        b'{"inputs":[{"name":"x","shape":[9000],"datatype":"FP32","data":['
        + b",".join([b"0.5"] * N)
        + b'],"data":[1]}]}'
    )
    assert isinstance(general, str) and fast == general  # the last "data" wins, as in orjson
