"""One send per answer: the writes a connection makes in one event-loop turn, joined.

uvicorn writes a response's head and its body with two `transport.write` calls; uvloop sends
each at once, so every small answer costs two send() syscalls (and on loopback the receiver's
wake-up twice). Under load that was the largest single cost left on the event loop. Wrapping
the transport so that writes of one turn are buffered and flushed together at the end of it
halves the syscalls without changing a byte on the wire.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescingTransport:
    """A transport proxy whose writes in one loop turn go out as one `write` on the next."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what was written (a no-op when nothing waits or the transport closed)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
