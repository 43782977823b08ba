"""The binary tensor data extension: raw little-endian tensors after the JSON header.

Fixed-size datatypes are read with `np.frombuffer` (zero copy); BYTES elements travel as a
4-byte little-endian length followed by the element's bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from serve.protocol.types import ProtocolError

_LENGTH = struct.Struct("<I")


def fmt_shape(shape: tuple[int, ...] | list[int]) -> str:
    """A shape as the protocol writes it: `[2, 784]`."""
    return "[" + ", ".join(str(d) for d in shape) + "]"


def element_count(shape: tuple[int, ...]) -> int:
    """prod(shape) with Python ints, so absurd shapes cannot overflow."""
    count = 1
    for dim in shape:
        count *= dim
    return count


def deserialize_bytes(
    buf: bytes | memoryview, what: str, base_offset: int = 0, max_count: int | None = None
) -> np.ndarray:
    """Read length-prefixed BYTES elements filling all of `buf` into a 1-D object array.

    `base_offset` is where `buf` starts in the request body, so errors name body offsets.
    """
    view = memoryview(buf)
    end = len(view)
    items: list[bytes] = []
    offset = 0
    while offset < end:
        if max_count is not None and len(items) >= max_count:
            raise ProtocolError(
                400,
                f"{what}: more BYTES elements than the shape holds ({max_count}); extra data "
                f"starts at byte offset {base_offset + offset}",
            )
        if end - offset < 4:
            raise ProtocolError(
                400,
                f"{what}: BYTES element {len(items)} at byte offset {base_offset + offset} needs "
                f"a 4-byte length, only {end - offset} bytes remain",
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if length > end - offset:
            raise ProtocolError(
                400,
                f"{what}: BYTES element {len(items)} at byte offset {base_offset + offset - 4} "
                f"declares {length} bytes, only {end - offset} remain",
            )
        items.append(view[offset : offset + length].tobytes())
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def serialize_bytes(arr: np.ndarray) -> bytes:
    """Write a BYTES tensor (bytes or str elements, row-major) as length-prefixed elements."""
    parts: list[bytes] = []
    for item in arr.ravel(order="C"):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def tensor_bytes(arr: np.ndarray, datatype: str) -> bytes | memoryview:
    """The binary form of an output tensor: little-endian row-major, or BYTES elements."""
    if datatype == "BYTES":
        return serialize_bytes(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    return memoryview(arr).cast("B") if arr.size else b""


def fixed_tensor(
    body: bytes,
    offset: int,
    size: int,
    dtype: np.dtype,
    shape: tuple[int, ...],
    what: str,
) -> np.ndarray:
    """A fixed-size tensor read in place from `body[offset:offset+size]`."""
    count = element_count(shape)
    expected = count * dtype.itemsize
    if size != expected:
        raise ProtocolError(
            400,
            f"{what}: binary_data_size is {size} bytes, but shape {fmt_shape(shape)} of "
            f"{count} elements x {dtype.itemsize} bytes needs {expected}",
        )
    arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    if dtype.kind == "b" and count and np.frombuffer(body, np.uint8, count, offset).max() > 1:
        raise ProtocolError(400, f"{what}: BOOL binary data must be bytes 0 or 1")
    return arr.reshape(shape)
