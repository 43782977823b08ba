"""The numeric fast paths of V2 JSON decoding give exactly what the general decoder (orjson +
numpy) gives: the same dtype and bytes, or the same 400.

Two fast paths are checked against the general one: the C parser (serve/protocol/_jsonnum.c,
built by `pip install -e .`) and simdjson (what runs where no C compiler was found). The C
parser must be built in CI: a missing extension fails there (TAPESERVE_REQUIRE_SYSTEM_TESTS=1)
and skips only locally.
"""

from __future__ import annotations

import contextlib
import decimal
import json
import random
import struct
from pathlib import Path

import numpy as np
import orjson
import pytest

from serve.protocol import _jsonnum_table, jsondata, v2
from serve.protocol.types import ProtocolError
from tests.support.system import require_module

N = 9000  # elements: even one-digit values make a body above jsondata.FAST_MIN_BYTES
FAST_PATHS = ("c", "simdjson")


@pytest.fixture(scope="module")
def jsonnum():
    """The built C parser (skips locally, fails in CI, when it was not built)."""
    return require_module("serve.protocol._jsonnum")


@contextlib.contextmanager
def decoder(path: str):
    """Decode with one path only: "general", "simdjson" or "c"."""
    saved = jsondata._jsonnum, jsondata._simdjson
    if path != "c":
        jsondata._jsonnum = None
    if path != "simdjson":
        jsondata._simdjson = None
    try:
        yield
    finally:
        jsondata._jsonnum, jsondata._simdjson = saved


@pytest.fixture(params=FAST_PATHS)
def fast(request):
    """Each fast path in turn (the C one only where it is built, and always in CI)."""
    if request.param == "c":
        request.getfixturevalue("jsonnum")
    return request.param


def body(values: list[str], datatype: str = "FP32", shape=None, extra: str = "") -> bytes:
    shape = [len(values)] if shape is None else shape
    tensor = f'"name":"x","shape":{json.dumps(shape)},"datatype":"{datatype}"'
    text = '{"inputs":[{' + tensor + ',"data":[' + ",".join(values) + "]}]" + extra + "}"
    assert len(text) > jsondata.FAST_MIN_BYTES
    return text.encode()


def decode(path: str, data, index: int | None = 0):
    """The decoded input `index` (all inputs when None), or the ProtocolError as text."""
    with decoder(path):
        try:
            request = v2.decode_infer(data, None)
        except ProtocolError as exc:
            return f"{exc.status} {exc.message}"
    if index is None or index >= len(request.inputs):
        return [item.data for item in request.inputs]
    return request.inputs[index].data


def same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if a.dtype == object:
        return a.dtype == b.dtype and a.shape == b.shape and a.tolist() == b.tolist()
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same(fast: str, data, index: int | None = 0):
    """The fast path's answer is the general decoder's, bit for bit; returns it."""
    got, want = decode(fast, data, index), decode("general", data, index)
    assert same(got, want), (got, want)
    return want


@pytest.fixture
def taken(monkeypatch):
    """How many tensors took a fast path (NumericData reached numeric_array)."""
    calls = []
    real = jsondata._fast_numeric
    monkeypatch.setattr(jsondata, "_fast_numeric", lambda *a: calls.append(1) or real(*a))
    return calls


def test_the_c_parser_is_built(jsonnum):
    assert jsondata._jsonnum is jsonnum


def test_the_fast_path_is_taken_for_a_large_flat_numeric_array(fast, taken):
    with decoder(fast):
        v2.decode_infer(body(["0.5"] * N), None)
    assert taken == [1]


# ---- numbers -------------------------------------------------------------------------------


def _random_double(rng: random.Random) -> float:
    while True:
        value = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
        if np.isfinite(value):
            return value


def _halfway(lo: float, hi: float, digits: int) -> str:
    """The exact midpoint of two adjacent floats, written with `digits` significant digits
    (when that many hold it exactly: on the midpoint; else just beside it)."""
    mid = (decimal.Decimal(lo) + decimal.Decimal(hi)) / 2
    return format(mid, f".{digits - 1}e")


def number_strings(seed: int, n: int) -> list[str]:
    """JSON number tokens where a parser goes wrong: any double's shortest repr, any number of
    digits at any exponent, midpoints of doubles and of float32s, subnormals and their edges,
    long mantissas, zeros, exponent spellings."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        kind = rng.randrange(9)
        if kind == 0:  # any double, shortest repr (17 significant digits at most)
            out.append(repr(_random_double(rng)))
        elif kind == 1:  # 1 to 19 digits (the exact mantissa range) at any exponent
            digits = rng.randint(1, 19)
            mantissa = str(rng.randrange(10 ** (digits - 1), 10**digits))
            out.append(f"{mantissa[0]}.{mantissa[1:] or '0'}e{rng.randint(-345, 310)}")
        elif kind == 2:  # integers with an exponent, and plain fractions
            mantissa = rng.randrange(1, 10 ** rng.randint(1, 20))
            out.append(f"{mantissa}e{rng.randint(-40, 40)}")
            out.append(f"{mantissa}.{rng.randrange(10**12):012d}")
        elif kind == 3:  # the midpoint of two doubles, exactly and just off it
            lo = _random_double(rng)
            hi = float(np.nextafter(lo, np.inf))
            if np.isfinite(hi):
                out.append(_halfway(lo, hi, rng.choice([17, 18, 19, 20, 25, 40, 800])))
        elif kind == 4:  # the midpoint of two float32s (double rounding would go wrong)
            f = np.float32(rng.uniform(-1e4, 1e4))
            g = np.nextafter(f, np.float32(np.inf))
            out.append(_halfway(float(f), float(g), rng.choice([9, 12, 17, 20, 30])))
        elif kind == 5:  # subnormal doubles and float32s, and the normal boundary
            out.append(repr(rng.randrange(1, 2**52) * 5e-324))
            out.append(repr(float(np.float32(rng.randrange(1, 2**23) * 2.0**-149))))
            out.append(f"2.22507385850720{rng.randrange(10**6):06d}e-308")
        elif kind == 6:  # many digits (beyond 19: strtod)
            digits = rng.randint(20, 400)
            mantissa = str(rng.randrange(10 ** (digits - 1), 10**digits))
            out.append(f"0.{mantissa}e{rng.randint(-300, 300)}")
            out.append(f"{mantissa}e-{digits + rng.randint(0, 20)}")
        elif kind == 7:  # fractions with leading zeros, exponent spellings
            zeros = "0" * rng.randint(0, 30)
            out.append(f"0.{zeros}{rng.randrange(1, 10**9)}")
            out.append(f"{rng.randint(1, 9)}E+{rng.randint(0, 300):04d}")
            out.append(f"{rng.randint(1, 9)}.{rng.randrange(10**5)}e-{rng.randint(0, 320):03d}")
        else:  # float32 values as a client writes them (numpy's float32 -> double -> repr)
            out.append(repr(float(np.float32(rng.gauss(0, 3)))))
    return [("-" if rng.random() < 0.4 else "") + text.lstrip("-") for text in out]


def significant_digits(text: str) -> int:
    """Digits from the first non-zero one to the last digit of the mantissa (trailing zeros
    count): beyond 19 the C parser leaves a number to the general decoder."""
    mantissa = text.lstrip("-").lower().split("e")[0].replace(".", "")
    return len(mantissa.lstrip("0"))


EDGE_NUMBERS = [
    "0", "-0", "0.0", "-0.0", "0e0", "-0e-5", "0.000", "1", "-1", "1.0", "1e0", "1E5", "1e+5",
    "1e-5", "1e-0", "0.1", "0.2", "0.3", "1e22", "1e23", "9007199254740991", "9007199254740992.0",
    "9007199254740993.0", "4.9406564584124654e-324", "2.4703282292062327e-324",
    "2.4703282292062328e-324", "2.2250738585072011e-308", "2.2250738585072014e-308",
    "1.7976931348623157e308", "1.7976931348623158e308", "1e-400", "1e-323", "1e-324",
    "3.4028234663852886e38", "3.4028235677973366e38", "3.4028235677973367e38", "1e39",
    "1.401298464324817e-45", "7.006492321624085e-46", "7.006492321624086e-46", "1e-46",
    "1.1754943508222875e-38", "65504", "65519.99", "65520", "6.103515625e-05", "5.96e-08",
    "0.1000000000000000055511151231257827", "123456789012345678901234567890.0",
    "0.30000000000000004", "1.00000000000000011102230246251565404236316680908203125",
    "1.00000000000000011102230246251565404236316680908203124",
    "1.00000000000000011102230246251565404236316680908203126", "1.0000000596046447753906250",
    "1.0000000596046447753906251", "1.0000000596046447753906249", "16777217", "16777217.0",
    "33554435", "1e0000000000000000000000000000000000001", "9" * 15, "9" * 19 + ".0",
    "9" * 20 + "e0", "1" + "0" * 300 + ".0",
]  # fmt: skip
#: Integers a double cannot hold exactly: float data holding them takes the general decoder
#: (numpy converts such Python ints its own way).
BIG_INTEGERS = ["9007199254740993", "9" * 19, "9" * 20, "1" + "0" * 300, "-" + "9" * 25]


@pytest.mark.parametrize("code, dtype", [("f", np.float32), ("d", np.float64)])
def test_the_c_parser_gives_python_floats_cast_bit_for_bit(jsonnum, code, dtype):
    """Straight from _jsonnum.parse: every number within double's range read by the C parser
    (no fallback hides a wrong one), each the bits of orjson's value cast to the dtype."""
    texts = number_strings(0, 60_000) + EDGE_NUMBERS
    finite = [t for t in texts if np.isfinite(float(t)) and significant_digits(t) <= 19]
    assert len(finite) > 35_000
    want = np.array([float(orjson.loads(t)) for t in finite])  # "-0" is the int 0
    with np.errstate(over="ignore"):
        want = want.astype(dtype)
    data = ("[" + ",".join(finite) + "]").encode()
    out = np.empty(len(finite), dtype)
    assert jsonnum.parse(data, 0, len(data), out, code)
    bad = np.flatnonzero(out.view(f"u{out.itemsize}") != want.view(f"u{want.itemsize}"))
    assert not len(bad), [(finite[i], out[i], want[i]) for i in bad[:10]]


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "FP64"])
def test_float_values_are_bit_identical(fast, datatype, taken):
    rng = np.random.default_rng(0)
    cases = [[f"{v:.{digits}g}" for v in rng.uniform(-1e3, 1e3, N)] for digits in (3, 9, 17, 25)]
    cases.append(number_strings(1, N))
    cases.append([str(v) for v in rng.integers(-(2**40), 2**40, N)])
    cases.append([text for text in EDGE_NUMBERS if np.isfinite(float(text))] * 150)
    for values in cases:
        assert_same(fast, body(values, datatype))
    short = [values for values in cases if max(map(significant_digits, values)) <= 19]
    assert len(short) >= 4 and len(taken) >= len(short)  # those did not fall back


@pytest.mark.parametrize(
    "datatype", ["INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"]
)
def test_integer_values_are_identical(fast, datatype):
    info = np.iinfo(jsondata.V2_TO_NUMPY[datatype])
    rng = np.random.default_rng(1)
    low, high = max(int(info.min), -(2**62)), min(int(info.max), 2**62)
    assert_same(fast, body([str(v) for v in rng.integers(low, high, N, endpoint=True)], datatype))
    for edge in (info.min, info.max, int(info.min) - 1, int(info.max) + 1, -(2**63), 2**64):
        assert_same(fast, body(["0", "-0"] * (N // 2) + [str(int(edge))], datatype))


@pytest.mark.parametrize(
    "last, datatype",
    [
        ("1.5", "INT32"),  # a float in integer data
        ("2.0", "INT32"),
        ("1e2", "INT64"),
        ("300", "INT8"),  # out of range
        ("-129", "INT8"),
        ("-1", "UINT8"),
        ("4294967296", "UINT32"),
        ("99999999999999999999", "INT64"),  # beyond 64 bits
        ("-9223372036854775809", "INT64"),
        ("9223372036854775808", "INT64"),
        ("9007199254740993", "FP32"),  # an integer a double cannot hold exactly
        ("18446744073709551616", "FP64"),
        *((big, datatype) for big in BIG_INTEGERS for datatype in ("FP16", "FP32", "FP64")),
        ("true", "FP32"),
        ("false", "INT8"),
        ('"a"', "FP32"),
        ('"]"', "FP32"),
        ("null", "FP32"),
        ("{}", "FP32"),
        ("NaN", "FP32"),  # tokens only the standard library reads
        ("-Infinity", "FP32"),
        ("Infinity", "FP64"),
        ("nan", "FP32"),  # not JSON at all
        ("inf", "FP64"),
        ("1e400", "FP64"),  # beyond double: orjson refuses, json says inf
        ("-1e400", "FP32"),
        ("[1]", "FP32"),  # ragged
        ("[]", "FP32"),
        ("1", "BOOL"),
        ("true", "BOOL"),
        ('"x"', "BYTES"),
        ("01", "FP32"),  # not JSON
        ("-01", "INT32"),
        ("1.", "FP32"),
        (".5", "FP32"),
        ("+1", "FP32"),
        ("--1", "FP32"),
        ("-", "FP32"),
        ("1e", "FP32"),
        ("1e+", "FP32"),
        ("1.5.2", "FP32"),
        ("0x10", "FP32"),
        ("1_000", "INT32"),
        ("1 2", "FP32"),
        ("\u00a01", "FP32"),
        ("1,", "FP32"),  # a trailing comma
        ("", "FP32"),
        ("1e-99999999999999999999", "FP32"),
        ("1e99999999999999999999", "FP64"),
    ],
)
def test_odd_data_gets_the_general_decoders_answer(fast, last, datatype):
    assert_same(fast, body(["1"] * (N - 1) + [last], datatype))
    assert_same(fast, body([last] + ["1"] * (N - 1), datatype))


@pytest.mark.parametrize("space", [" ", "\n", "\t", "\r\n", "  \t "])
def test_whitespace_anywhere_gives_the_same_values(fast, space, taken):
    values = [repr(v) for v in np.random.default_rng(2).standard_normal(N).tolist()]
    text = body(values).decode()
    text = text.replace(",", space + "," + space).replace("[", "[" + space)
    text = text.replace("]", space + "]").replace(":", space + ":" + space)
    assert_same(fast, (space + text + space).encode())
    assert taken


def test_nested_duplicate_keys_and_shape_mismatch_get_the_general_answer(fast):
    rows = ["[" + ",".join(["0.25"] * 90) + "]"] * 100
    assert_same(fast, body(rows, shape=[100, 90]))
    assert_same(fast, body(rows, shape=[9000]))
    assert_same(fast, body(["0.5"] * N, extra=',"id":"a","id":"b"'))  # orjson keeps the last
    assert_same(fast, body(["0.5"] * N, shape=[N - 1]))
    assert_same(fast, body(["0.5"] * N, shape=[N + 1]))
    assert_same(fast, body(["0.5"] * N, shape=[0]))
    assert_same(fast, body(["0.5"] * N, shape=[-N]))
    assert_same(fast, body(["0.5"] * N, shape=[N, True]))
    assert_same(fast, body(["0.5"] * N, shape="x"))
    assert_same(fast, body(["0.5"] * N, datatype="FP8"))
    data = b",".join([b"0.5"] * N)
    head = b'{"inputs":[{"name":"x","shape":[9000],"datatype":"FP32",'
    for doc in (
        head + b'"data":[' + data + b'],"data":[1]}]}',  # the last "data" wins, as in orjson
        head + b'"data":[1],"data":[' + data + b"]}]}",
        head + b'"d\\u0061ta":[' + data + b"]}]}",  # an escaped key means "data" too
        head + b'"data":[' + data + b']}],"inputs":[]}',
        head + b'"data":[' + data + b"]}]",  # not closed
        head + b'"data":[' + data + b"]}]}}",
        head + b'"data":[' + data + b"]}]} x",
        b"[" + data + b"]",
        head + b'"data":[' + data + b"]}]," + b'"parameters":{"inputs":[{"data":[1]}]}}',
    ):
        assert_same(fast, doc)


def test_several_inputs_of_every_kind_beside_a_large_one(fast, taken):
    """BOOL, BYTES (with brackets and escapes in strings), nested and small inputs beside the
    large numeric ones: all decoded as the general decoder does them."""
    rng = np.random.default_rng(3)
    inputs = [
        {"name": "s", "datatype": "BYTES", "shape": [3], "data": ["a]", '[b"', "\\]"]},
        {"name": "img", "datatype": "FP32", "shape": [2, N // 2], "data": rng.random(N).tolist()},
        {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        {"name": "n", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
        {"name": "i", "datatype": "INT16", "shape": [N], "data": rng.integers(-9, 9, N).tolist()},
        {"name": "h", "datatype": "FP16", "shape": [3], "data": [0.1, 65504, 1e-8]},
    ]
    doc = {"id": "r[1]", "inputs": inputs, "parameters": {"note": "]}"}, "outputs": []}
    for text in (json.dumps(doc), json.dumps(doc, indent=2)):
        got = assert_same(fast, text.encode(), None)
        assert [a.dtype for a in got] == [object, np.float32, bool, np.int64, np.int16, np.float16]
    if fast == "c":  # the flat numeric inputs took it (simdjson gives up on '[' in strings)
        assert len(taken) == 6


def test_bodies_as_bytearray_memoryview_and_with_binary_inputs(fast, taken):
    values = [repr(v) for v in np.random.default_rng(4).standard_normal(N).tolist()]
    data = body(values)
    want = decode("general", data)
    assert same(decode(fast, bytearray(data)), want)
    assert same(decode(fast, memoryview(data)), want)
    # the binary extension: a JSON header, then raw bytes
    raw = np.arange(4, dtype=np.float32).tobytes()
    doc = json.loads(data)
    doc["inputs"].append(
        {"name": "y", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}
    )
    header = json.dumps(doc).encode()
    for path in (fast, "general"):
        with decoder(path):
            request = v2.decode_infer(header + raw, len(header))
        assert same(request.inputs[0].data, want)
        assert request.inputs[1].data.tolist() == [0, 1, 2, 3]
    assert taken


def test_random_bodies_with_broken_bytes(fast):
    """Bodies cut short or with one byte changed: the same values or the same error."""
    rng = random.Random(5)
    base = body(number_strings(6, 3000) + ["1"] * 6000)
    for _ in range(60):
        data = bytearray(base)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        else:
            data[rng.randrange(len(data))] = rng.choice(b'[]{},:"\\-+.eE0123456789 \x00\xff')
        assert_same(fast, bytes(data))


def test_the_power_table_is_the_generators():
    """serve/protocol/_jsonnum_pow5.h is what _jsonnum_table.py writes (and each entry is the
    floor of 5**q scaled into [2**127, 2**128), checked with Python's integers)."""
    header = Path(_jsonnum_table.__file__).with_name("_jsonnum_pow5.h").read_text()
    assert header == _jsonnum_table.header()
    for q in (-342, -28, -27, -1, 0, 1, 27, 28, 308):
        significand, e = _jsonnum_table.entry(q)
        with decimal.localcontext() as context:
            context.prec = 400
            exact = decimal.Decimal(5) ** q * decimal.Decimal(2) ** (127 - e)
            assert significand == int(exact.to_integral_value(decimal.ROUND_FLOOR))
