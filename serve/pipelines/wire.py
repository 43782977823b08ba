"""Messages between the server and a Python model's process: a length, then a pickle.

Pickle protocol 5 sends numpy arrays as one buffer each; both ends are tapeserve's own code.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import socket
import struct
from typing import Any

import numpy as np

_LENGTH = struct.Struct("<Q")


class ChannelClosed(ConnectionError):
    """The other end is gone (it exited, crashed or was killed)."""


#: Socket buffers big enough for an image tensor in one go (the default ~200 kB made a 600 kB
#: tensor cost several process switches each way).
BUFFER_BYTES = 4 * 1024 * 1024


def tune(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)


#: Arrays of at least this many bytes travel out of band, sent from their own memory.
OUT_OF_BAND_BYTES = 65536


def _rebuild(dtype: str, shape: tuple, data: Any) -> np.ndarray:
    return np.frombuffer(data, dtype).reshape(shape)


def _reduce_array(arr: np.ndarray) -> Any:
    """Numeric arrays as (dtype, shape, bytes): 3x cheaper both ways than numpy's own pickling
    (23 + 15 us for a small array on this machine), and writable on arrival, as Triton's are."""
    if arr.dtype.hasobject:
        return arr.__reduce_ex__(5)
    shape = arr.shape  # ascontiguousarray makes a 0-d array 1-d
    arr = np.ascontiguousarray(arr)
    if arr.nbytes >= OUT_OF_BAND_BYTES:
        return _rebuild, (arr.dtype.str, shape, pickle.PickleBuffer(arr))
    return _rebuild, (arr.dtype.str, shape, bytearray(arr.tobytes()))


class _Pickler(pickle.Pickler):
    dispatch_table = {**copyreg.dispatch_table, np.ndarray: _reduce_array}


def send(sock: socket.socket, message: Any) -> None:
    """One pickle; big arrays out of band, sent from their own memory (no copy into it)."""
    buffers: list[pickle.PickleBuffer] = []
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffers.append).dump(message)
    head = out.getbuffer()
    raws = [b.raw() for b in buffers]
    sizes = struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
    frame = b"".join([_LENGTH.pack(len(head)), _LENGTH.pack(len(raws)), sizes, head])
    if sum(r.nbytes for r in raws) < 65536:  # small: one system call
        sock.sendall(b"".join([frame, *raws]))
        return
    sock.sendall(frame)
    for raw in raws:
        sock.sendall(raw)


def recv(sock: socket.socket) -> Any:
    """The next message; ChannelClosed at end of stream; socket.timeout per the socket's."""
    length, count = struct.unpack("<2Q", _read(sock, 2 * _LENGTH.size))
    sizes = struct.unpack(f"<{count}Q", _read(sock, 8 * count)) if count else ()
    head = _read(sock, length)
    return pickle.loads(head, buffers=[_read(sock, size) for size in sizes])


def _read(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if not n:
            raise ChannelClosed("the model's process closed its end")
        got += n
    return buf
