"""JSON parsing and tensor data conversion shared by the V2 and TF Serving codecs.

Requests may carry `NaN`, `Infinity` and `-Infinity` (as Python's json and TF Serving write
them); responses write them the same way so float values round-trip. `null` in tensor data is
an error, never a silent NaN.

orjson parses and writes several times faster than the standard library (see
benchmarks/protocol_codec.py) but knows no NaN/Infinity tokens: bodies it refuses are parsed
again by `json`, and it writes only documents whose floats are all finite. Large V2 bodies whose
tensors are flat arrays of numbers take a fast path (`loads_infer`) that never makes a Python
object per element: the C parser of serve/protocol/_jsonnum.c where it was built, else simdjson.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np
import orjson

from serve.protocol.datatypes import V2_TO_NUMPY
from serve.protocol.types import ProtocolError

try:  # built by setup.py where a C compiler is found (tests/protocol/test_json_fast_path.py)
    from serve.protocol import _jsonnum
except ImportError:  # pragma: no cover - installed without a compiler: simdjson takes its place
    _jsonnum = None
try:  # simdjson parses numbers straight into C arrays; the fast path where _jsonnum is missing
    import simdjson as _simdjson
except ImportError:  # pragma: no cover - a platform without pysimdjson wheels
    _simdjson = None

_INT_LIMITS = {
    name: (int(np.iinfo(dt).min), int(np.iinfo(dt).max))
    for name, dt in V2_TO_NUMPY.items()
    if dt.kind in "iu"
}


def loads(text: bytes | bytearray | memoryview | str, what: str = "request body") -> Any:
    """Parse JSON, turning every failure (syntax, encoding, nesting depth) into a 400."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass  # NaN/Infinity tokens, numbers beyond double, UTF-16, lone surrogates, ...
    if isinstance(text, memoryview):
        text = bytes(text)  # the standard library reads no memoryview
    try:
        return json.loads(text)
    except RecursionError:
        raise ProtocolError(400, f"{what}: JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise ProtocolError(400, f"{what} is not valid JSON: {exc}") from None


#: Datatypes whose flat JSON `data` may take the simdjson path, and the C type it is parsed as
#: (double or int64, what orjson + np.asarray would build for valid data of that datatype).
_FAST_AS = {"FP16": "d", "FP32": "d", "FP64": "d"}
_FAST_AS.update({name: "i" for name in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16")})
_FAST_AS["UINT32"] = "i"
#: What _jsonnum parses each datatype's data into: float32 and float64 as the general decoder
#: makes them (the correctly rounded double, cast); FP16 as float64 and the integers as int64,
#: cast (and range-checked) afterwards as the general decoder does.
_C_KIND = {"FP32": ("f", np.float32), "FP64": ("d", np.float64), "FP16": ("d", np.float64)}
_C_KIND.update({name: ("q", np.int64) for name, kind in _FAST_AS.items() if kind == "i"})
#: Below this many bytes a body is parsed by orjson alone (the fast path's set-up costs more
#: than it saves on small documents; benchmarks/protocol_codec.py).
FAST_MIN_BYTES = 16 * 1024
#: Integers from here on are not exact in a double: such data takes the general path.
_EXACT_IN_DOUBLE = 2.0**53


class NumericData:
    """A flat JSON array of numbers, parsed in C: `values` holds, element for element, what
    `np.asarray` of orjson's list cast to the datatype holds (float32/float64 already cast;
    float64 for FP16 and int64 for integer datatypes, cast and range-checked when used)."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)


class _Fallback(Exception):
    """The fast path does not apply; parse the body with `loads`."""


def loads_infer(text: bytes | bytearray | memoryview) -> Any:
    """`loads` for a V2 infer body, with the `data` of every input whose datatype is numeric
    and whose data is a flat array of numbers as a `NumericData` instead of a list.

    Image-sized tensors are millions of numbers: orjson makes a Python float of each and
    np.asarray reads them back, which costs most of a large JSON request. The C parser
    (_jsonnum) finds the `data` arrays without parsing the rest, parses them straight into the
    tensor's dtype, and orjson parses the rest of the body with the arrays left out; without
    it simdjson parses the body into C arrays. Whatever the fast path is not sure of - nested
    or mixed data, NaN/Infinity, repeated or escaped keys, integers beyond 2**53 in float data,
    a count of numbers that is not the shape's - is parsed by `loads`, so both give the same
    values and the same errors (tests/protocol/test_json_fast_path.py).
    """
    if len(text) >= FAST_MIN_BYTES:
        if _jsonnum is not None:
            doc = _located_document(text)
            if doc is not None:
                return doc
        elif _simdjson is not None:
            doc = _simdjson_document(bytes(text))
            if doc is not None:
                return doc
    return loads(text)


def _located_document(text: bytes | bytearray | memoryview) -> dict | None:
    """The body parsed with its inputs' `data` arrays read by _jsonnum, or None (not sure)."""
    spans = _jsonnum.locate(text)
    if spans is None:
        return None
    view, pieces, at = memoryview(text), [], 0
    for _, start, end in spans:  # the rest of the body, with null where each array was
        pieces += (view[at:start], b"null")
        at = end
    pieces.append(view[at:])
    try:
        doc = orjson.loads(b"".join(pieces))
        inputs = doc["inputs"]
        for index, start, end in spans:
            tensor = inputs[index]
            if tensor["data"] is not None:
                return None  # not where locate saw it: the general decoder says
            values = _c_numbers(text, start, end, tensor)
            # what _jsonnum does not read (BOOL, BYTES, nested, ...) orjson does, as it would
            # in the whole body; a span ends at the array's first ']', so one orjson reads is
            # the whole array
            tensor["data"] = orjson.loads(view[start:end]) if values is None else values
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None  # not valid JSON, or not shaped as locate saw it: the general decoder says
    return doc


def _c_numbers(text: Any, start: int, end: int, tensor: dict) -> NumericData | None:
    """body[start:end] parsed for `tensor`'s datatype, as many numbers as its shape holds, or
    None when _jsonnum is not sure of them."""
    datatype = tensor.get("datatype")
    kind = _C_KIND.get(datatype) if isinstance(datatype, str) else None
    shape = tensor.get("shape")
    if kind is None or not isinstance(shape, list):
        return None
    count = 1
    for dim in shape:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            return None
        count *= dim
        if count > (end - start) // 2:  # each number takes a byte and a comma or bracket
            return None
    if count == 0:
        return None
    code, dtype = kind
    out = np.empty(count, dtype)
    return NumericData(out) if _jsonnum.parse(text, start, end, out, code) else None


def _simdjson_document(text: bytes) -> Any:
    """The body parsed by simdjson, flat numeric `data` as NumericData; None when not sure."""
    try:
        doc = _infer_document(_simdjson.Parser().parse(text))
        # simdjson's as_buffer flattens nested arrays: every '[' of the body must be an array
        # the document is known to hold, so no numeric `data` held one
        if _count_brackets(text) != _arrays(doc):
            raise _Fallback
        return doc
    except (_Fallback, ValueError, TypeError, RuntimeError, KeyError, IndexError):
        return None


def _count_brackets(text: bytes) -> int:
    """'[' in `text` (find is memchr, many times faster than bytes.count for a rare byte)."""
    count, at = 0, text.find(b"[")
    while at != -1:
        count += 1
        at = text.find(b"[", at + 1)
    return count


def _arrays(value: Any) -> int:
    """JSON arrays in a parsed document (NumericData included); _Fallback when a string holds
    '[', which would make the count of '[' in the body ambiguous."""
    if isinstance(value, list):
        return 1 + sum(_arrays(item) for item in value)
    if isinstance(value, dict):
        return sum(_arrays(key) + _arrays(item) for key, item in value.items())
    if isinstance(value, str) and "[" in value:
        raise _Fallback
    return 1 if isinstance(value, NumericData) else 0


def _unique_keys(obj: Any) -> list[str]:
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        raise _Fallback  # orjson keeps the last of duplicate keys, simdjson's lookup the first
    return keys


def _python(value: Any) -> Any:
    """A simdjson value as the plain Python orjson would give."""
    if isinstance(value, _simdjson.Object):
        _unique_keys(value)
        return value.as_dict()
    if isinstance(value, _simdjson.Array):
        return value.as_list()
    return value


def _infer_document(doc: Any) -> Any:
    if not isinstance(doc, _simdjson.Object):
        raise _Fallback
    out = {}
    for key in _unique_keys(doc):
        value = doc[key]
        if key == "inputs" and isinstance(value, _simdjson.Array):
            out[key] = [_infer_input(item) for item in value]
        else:
            out[key] = _python(value)
    return out


def _infer_input(tensor: Any) -> Any:
    if not isinstance(tensor, _simdjson.Object):
        return _python(tensor)
    keys = _unique_keys(tensor)
    kind = _FAST_AS.get(tensor["datatype"]) if "datatype" in keys else None
    out = {}
    for key in keys:
        value = tensor[key]
        if key == "data" and kind is not None and isinstance(value, _simdjson.Array):
            out[key] = _numbers(value, kind)
        else:
            out[key] = _python(value)
    return out


def _numbers(array: Any, kind: str) -> Any:
    """The array as NumericData when it is flat and all numbers (of `kind`), else as a list."""
    count = len(array)
    if count == 0:
        return []
    try:
        values = np.frombuffer(
            array.as_buffer(of_type=kind), np.float64 if kind == "d" else np.int64
        )
    except (ValueError, TypeError, RuntimeError):
        return array.as_list()  # bools, strings, nulls, floats in integer data: the general path
    if len(values) != count:
        return array.as_list()  # nested: the general path checks the shape
    if kind == "d" and (values.max() >= _EXACT_IN_DOUBLE or values.min() <= -_EXACT_IN_DOUBLE):
        return array.as_list()  # large integers: np.asarray may convert them differently
    return NumericData(values)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(obj: Any, *, finite: bool = False) -> bytes:
    """Compact JSON; numpy arrays and scalars allowed; non-finite floats written as NaN /
    Infinity / -Infinity tokens.

    `finite=True` promises that no float in `obj` is NaN or infinite, which allows orjson.
    """
    if finite:
        try:
            return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:
            pass  # e.g. a lone surrogate in a string: the standard writer escapes it
    return json.dumps(obj, separators=(",", ":"), default=_plain).encode()


def is_finite(arr: np.ndarray) -> bool:
    """True unless a float tensor holds NaN or an infinity."""
    return arr.dtype.kind != "f" or bool(np.isfinite(arr).all())


def tensor_value(arr: np.ndarray, flat: bool) -> Any:
    """A tensor for `dumps`: numeric stays numpy (native, contiguous; flat or nested as asked),
    BYTES becomes (nested) lists of UTF-8 strings (UnicodeDecodeError if not UTF-8)."""
    if arr.dtype.kind in "OSU":
        strings = output_data(arr)
        if flat:
            return strings
        out = np.empty(len(strings), dtype=object)
        out[:] = strings
        return out.reshape(arr.shape).tolist()
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if flat:
        return np.ascontiguousarray(arr.reshape(-1))
    if arr.ndim == 0:
        return arr.item()
    return np.ascontiguousarray(arr)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, (list, tuple)):
        return "a nested array (data is not rectangular)"
    if isinstance(value, dict):
        return "an object"
    return f"{type(value).__name__} {value!r}"


_ALL_OK = object()


def _first_bad(arr: np.ndarray, ok) -> Any:
    """The first element of `arr` (any rank) failing `ok`, or `_ALL_OK`."""
    for value in arr.reshape(-1):
        if not ok(value):
            return value
    return _ALL_OK


def _reject(what: str, datatype: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(400, f"{what}: {datatype} data must be {expected}, got {_describe(value)}")


def numeric_array(data: Any, datatype: str, what: str) -> np.ndarray:
    """A numeric/BOOL tensor from (nested) JSON lists, shaped as nested; strict about types.

    Integers must be integral and in range, BOOL must be true/false, and null, strings or
    objects are rejected with the offending value named.
    """
    dtype = V2_TO_NUMPY[datatype]
    if isinstance(data, NumericData):
        return _fast_numeric(data.values, datatype, dtype, what)
    arr = _checked(np.asarray, data, what)
    kind = arr.dtype.kind
    if arr.size == 0:
        return np.empty(arr.shape, dtype)
    if kind in "USV":
        bad = _first_bad(_objects(data, what), lambda v: not isinstance(v, str))
        raise _reject(what, datatype, _expected(datatype), bad)
    if datatype == "BOOL":
        if kind != "b":
            bad = _first_bad(_objects(data, what), lambda v: isinstance(v, bool))
            raise _reject(what, datatype, "true or false", bad)
        return arr
    if kind == "b":
        raise _reject(what, datatype, _expected(datatype), True)
    if datatype in _INT_LIMITS:
        return _integer_array(arr, data, datatype, what)
    if kind == "O":
        flat = _objects(data, what)
        bad = _first_bad(flat, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
        if bad is not _ALL_OK:
            raise _reject(what, datatype, "numbers", bad)
        try:
            arr = np.asarray(flat.tolist(), dtype=np.float64).reshape(flat.shape)
        except (OverflowError, ValueError):
            raise ProtocolError(400, f"{what}: a number is too large for {datatype}") from None
    with np.errstate(over="ignore"):
        return arr.astype(dtype, copy=False)


def _fast_numeric(values: np.ndarray, datatype: str, dtype: np.dtype, what: str) -> np.ndarray:
    """NumericData's values as `dtype`, with the general path's range check for integers."""
    if datatype in _INT_LIMITS:
        lo, hi = _INT_LIMITS[datatype]
        low, high = int(values.min()), int(values.max())
        if low < lo or high > hi:
            value = low if low < lo else high
            raise ProtocolError(
                400, f"{what}: value {value} is out of range for {datatype} [{lo}, {hi}]"
            )
    with np.errstate(over="ignore"):
        return values.astype(dtype, copy=False)


def _expected(datatype: str) -> str:
    return "integers" if datatype in _INT_LIMITS else "numbers"


#: Deepest nesting of tensor data (numpy itself stops at 64, parts of it at 32).
MAX_DEPTH = 32


def _checked(convert, data: Any, what: str, **kw: Any) -> np.ndarray:
    """np.asarray-like conversion with numpy's complaints turned into a 400."""
    try:
        arr = convert(data, **kw)
    except (ValueError, TypeError, RecursionError, RuntimeError):
        raise ProtocolError(400, f"{what}: data is not a rectangular array") from None
    if arr.ndim > MAX_DEPTH:
        raise ProtocolError(400, f"{what}: data is nested deeper than {MAX_DEPTH} levels")
    return arr


def _objects(data: Any, what: str) -> np.ndarray:
    """The data as an object array (nested lists kept as elements when ragged)."""
    return _checked(np.asarray, data, what, dtype=object)


def _integer_array(arr: np.ndarray, data: Any, datatype: str, what: str) -> np.ndarray:
    lo, hi = _INT_LIMITS[datatype]
    if arr.dtype.kind not in "iu":
        # floats, or ints beyond int64 mixed in: check each element exactly
        flat = _objects(data, what)
        bad = _first_bad(flat, lambda v: isinstance(v, int) and not isinstance(v, bool))
        if bad is not _ALL_OK:
            if isinstance(bad, float) and bad.is_integer() and not lo <= bad <= hi:
                raise ProtocolError(
                    400, f"{what}: value {bad:.0f} is out of range for {datatype} [{lo}, {hi}]"
                )
            if isinstance(bad, float) and bad.is_integer():
                bad = f"{bad!r} (write integers without a fraction)"
                raise ProtocolError(400, f"{what}: {datatype} data must be integers, got {bad}")
            raise _reject(what, datatype, "integers", bad)
        values = flat.tolist()
        low, high = min(flat.reshape(-1)), max(flat.reshape(-1))
    else:
        values = arr
        low, high = int(arr.min()), int(arr.max())
    if low < lo or high > hi:
        value = low if low < lo else high
        raise ProtocolError(
            400, f"{what}: value {value} is out of range for {datatype} [{lo}, {hi}]"
        )
    return np.asarray(values, dtype=V2_TO_NUMPY[datatype]).reshape(arr.shape)


def bytes_array(data: Any, what: str, allow_b64: bool = False) -> np.ndarray:
    """A BYTES tensor (object array of bytes) from (nested) JSON strings.

    Strings are UTF-8 encoded; with `allow_b64` (TF Serving) `{"b64": "..."}` objects are
    base64-decoded.
    """
    arr = _objects(data, what)
    out = np.empty(arr.shape, dtype=object)
    flat_out = out.reshape(-1)
    for i, value in enumerate(arr.flat):
        if isinstance(value, str):
            try:
                flat_out[i] = value.encode("utf-8")
            except UnicodeEncodeError:
                raise ProtocolError(
                    400, f"{what}: element {i} is not valid Unicode (lone surrogate)"
                ) from None
        elif allow_b64 and isinstance(value, dict) and set(value) == {"b64"}:
            flat_out[i] = b64decode(value["b64"], f"{what}: element {i}")
        else:
            expected = 'strings or {"b64": ...} objects' if allow_b64 else "strings"
            raise _reject(what, "BYTES", expected, value)
    return out


def b64decode(text: Any, what: str) -> bytes:
    """Strict base64 (standard alphabet, padding required) or a 400 naming the element."""
    if not isinstance(text, str):
        raise ProtocolError(400, f'{what}: "b64" must be a string, got {_describe(text)}')
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(400, f'{what}: "b64" value is not valid base64') from None


def output_data(arr: np.ndarray) -> list:
    """A tensor as a flat row-major JSON list; BYTES as UTF-8 strings, FP16 as floats."""
    flat = arr.reshape(-1)
    if arr.dtype.kind in "OSU":
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()
