"""Messages between the server and a Python model's process: a length, then a pickle.

Pickle protocol 5 sends numpy arrays as one buffer each; both ends are tapeserve's own code.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

_LENGTH = struct.Struct("<Q")


class ChannelClosed(ConnectionError):
    """The other end is gone (it exited, crashed or was killed)."""


#: Socket buffers big enough for an image tensor in one go (the default ~200 kB made a 600 kB
#: tensor cost several process switches each way).
BUFFER_BYTES = 4 * 1024 * 1024


def tune(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)


def send(sock: socket.socket, message: Any) -> None:
    """One pickle, out-of-band arrays sent from their own memory (no copy into the pickle)."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    sizes = struct.pack(f"<{len(raws)}Q", *(r.nbytes for r in raws))
    frame = _LENGTH.pack(len(head)) + _LENGTH.pack(len(raws)) + sizes + head
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
