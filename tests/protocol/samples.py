"""Sample tensors for every V2 datatype, with the edge values each type must carry."""

from __future__ import annotations

import numpy as np

from serve.protocol.datatypes import V2_TO_NUMPY

DATATYPES = list(V2_TO_NUMPY)


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """A tensor of `datatype` holding its extremes (min/max, NaN/Inf, empty/non-ASCII strings)."""
    count = int(np.prod(shape))
    dtype = V2_TO_NUMPY[datatype]
    if datatype == "BYTES":
        pool = [b"", b"hello", "h\u00e9llo \u2603".encode(), b'a,b\n"c"', b"\\x00"]
        values = [pool[i % len(pool)] for i in range(count)]
        out = np.empty(count, dtype=object)
        out[:] = values
        return out.reshape(shape)
    if datatype == "BOOL":
        return (np.arange(count) % 3 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        pool = [info.min, info.max, 0, 1, info.max // 3]
        return np.array([pool[i % len(pool)] for i in range(count)], dtype=dtype).reshape(shape)
    info = np.finfo(dtype)
    pool = [np.nan, np.inf, -np.inf, 0.1, -0.0, info.max, info.tiny, 1 / 3]
    return np.array([pool[i % len(pool)] for i in range(count)], dtype=dtype).reshape(shape)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal shape, dtype and values (NaN equal to NaN, -0.0 sign kept)."""
    assert got.shape == want.shape
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if want.dtype.kind == "f":
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
        np.testing.assert_array_equal(got, want)  # treats NaN == NaN
    else:
        assert got.tolist() == want.tolist()
