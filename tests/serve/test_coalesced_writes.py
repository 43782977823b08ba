"""CoalescingTransport: the writes of one loop turn leave as one send, in order, nothing lost."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from serve.workers.coalesced_writes import CoalescingTransport


class _Recording:
    """Passes every call to a real transport and records the writes it receives."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str):
        return getattr(self.transport, name)


#: The worker runs uvloop; the plain asyncio loop must behave the same.
RUNNERS = pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])


async def _pair() -> tuple[_Recording, CoalescingTransport, socket.socket]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    recording = _Recording(transport)
    return recording, CoalescingTransport(recording, loop), theirs


async def _read(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    data = b""
    while len(data) < size:
        data += await loop.sock_recv(sock, size - len(data))
    return data


@RUNNERS
def test_writes_of_one_turn_leave_as_one_write_in_order(run) -> None:
    async def main():
        recording, transport, peer = await _pair()
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        transport.write(b"")
        transport.write(b"hello")
        assert recording.writes == []  # nothing sent before the turn ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert recording.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
        transport.write(b"next")  # a later turn: its own write
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(recording.writes) == 2
        data = await _read(peer, len(recording.writes[0]) + 4)
        assert data == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhellonext"
        transport.close()
        peer.close()

    run(main())


@RUNNERS
def test_close_sends_what_is_pending_first_and_abort_drops_it(run) -> None:
    async def main():
        recording, transport, peer = await _pair()
        transport.write(b"last words")
        assert transport.get_write_buffer_size() >= len(b"last words")
        transport.close()
        assert recording.writes == [b"last words"]
        assert transport.is_closing()
        assert await _read(peer, 10) == b"last words"
        peer.close()

        recording, transport, peer = await _pair()
        transport.write(b"never sent")
        transport.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert recording.writes == []
        peer.close()

    run(main())


@RUNNERS
def test_a_flush_after_the_transport_closed_sends_nothing(run) -> None:
    async def main():
        recording, transport, peer = await _pair()
        transport.write(b"x")
        recording.transport.close()  # closed underneath (e.g. the peer reset the connection)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert recording.writes == []
        peer.close()

    run(main())
