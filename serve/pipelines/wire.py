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


def send(sock: socket.socket, message: Any) -> None:
    data = pickle.dumps(message, protocol=5)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def recv(sock: socket.socket) -> Any:
    """The next message; ChannelClosed at end of stream; socket.timeout per the socket's."""
    (length,) = _LENGTH.unpack(_read(sock, _LENGTH.size))
    return pickle.loads(_read(sock, length))


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
