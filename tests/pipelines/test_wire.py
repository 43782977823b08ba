"""Messages between the server and a Python model's process: arrays of every kind arrive equal
and writable (models may change their inputs in place, as under Triton)."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from serve.pipelines import wire

ARRAYS = [
    np.arange(4, dtype=np.float32).reshape(1, 4),
    np.arange(3 * 224 * 224, dtype=np.float32).reshape(1, 3, 224, 224),  # out of band
    np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],  # not contiguous
    np.array(3.5),  # 0-d
    np.zeros((0, 4), np.uint8),
    np.array([[b"\x00png"], [b""]], dtype=object),  # BYTES
    np.array([True, False]),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_round_trip(array: np.ndarray) -> None:
    a, b = socket.socketpair()
    wire.tune(a)
    wire.tune(b)
    with a, b:
        sender = threading.Thread(target=wire.send, args=(a, ("execute", {"x": array})))
        sender.start()
        kind, got = wire.recv(b)
        sender.join()
    assert kind == "execute"
    out = got["x"]
    assert out.dtype == array.dtype and out.shape == array.shape
    assert np.array_equal(out, array)
    if out.size:
        out.flat[0] = out.flat[-1]  # writable


def test_closed_channel() -> None:
    a, b = socket.socketpair()
    a.close()
    with b, pytest.raises(wire.ChannelClosed):
        wire.recv(b)
