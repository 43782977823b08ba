"""The async Gunicorn worker: uvicorn (httptools, uvloop) serving the app's ASGI face.

One event loop per worker answers every connection; inference runs natively on it and the Flask
endpoints run in a small thread pool (serve/http/fast_path.py). The command line stays the same
for both worker classes: Gunicorn loads `serve.app:create_app()` and this worker serves its
`asgi(threads=cfg.threads)`.

It keeps every promise of the gthread worker (serve/workers/gthread.py):

- Drain: on SIGTERM `draining()` turns true at once (readiness 503), connections already in the
  listen backlog are taken and the listeners closed (later clients are refused at connect),
  in-flight requests finish, a request arriving on a kept-alive connection within
  `STOP_KEEPALIVE_LINGER` is answered with `Connection: close`, then the worker exits cleanly
  (status 0, see `exit_after_drain`) within `graceful_timeout`. SIGINT and SIGQUIT stop it at
  once (Gunicorn's quick shutdown).
- Limits: Gunicorn's `limit_request_line` (414), `limit_request_field_size` and
  `limit_request_fields` (431), and malformed HTTP (400), all answered as `{"error": ...}` JSON
  with `Connection: close`.
- Gunicorn's heartbeat, `max_requests` (the answer that reaches it says `Connection: close`) and
  worker boot failure (`WORKER_BOOT_ERROR`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, ClassVar

import httptools
from gunicorn.arbiter import Arbiter
from gunicorn.http.message import DEFAULT_MAX_HEADERFIELD_SIZE, MAX_HEADERS, MAX_REQUEST_LINE
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import Server, ServerState
from uvicorn_worker import UvicornWorker

from serve.core.health import draining, start_draining
from serve.workers.coalesced_writes import CoalescingTransport
from serve.workers.drain import accept_backlog, json_error_response

logger = logging.getLogger("uvicorn.error")

#: SIGTERM drains; SIGINT and SIGQUIT (Gunicorn's quick shutdown) stop at once.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
STOP_MARGIN_S = 0.25


@dataclass(frozen=True)
class HttpLimits:
    """Gunicorn's request-head limits, normalised the way Gunicorn's own parser does."""

    request_line: int = 4094  # 0: unlimited
    fields: int = 100
    field_size: int = 8190
    head_bytes: int = field(init=False)  # most bytes a head may take (Gunicorn's buffer bound)

    def __post_init__(self) -> None:
        line = self.request_line or 1024 * 1024
        object.__setattr__(self, "head_bytes", self.fields * (self.field_size + 2) + 4 + line)

    @classmethod
    def from_cfg(cls, cfg: Any) -> HttpLimits:
        line = cfg.limit_request_line
        line = MAX_REQUEST_LINE if line < 0 or line >= MAX_REQUEST_LINE else line
        fields = cfg.limit_request_fields
        fields = MAX_HEADERS if fields <= 0 or fields > MAX_HEADERS else fields
        size = cfg.limit_request_field_size
        return cls(line, fields, size if size > 0 else DEFAULT_MAX_HEADERFIELD_SIZE)


class HeadError(Exception):
    """A request head that breaks a limit or the syntax: answered, then the connection closes."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def _fields_too_large(what: str) -> HeadError:
    return HeadError(431, "Request Header Fields Too Large", f"Error parsing headers: '{what}'")


class TapeserveHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with Gunicorn's head limits, JSON errors and drain rules."""

    limits: ClassVar[HttpLimits] = HttpLimits()  # the worker sets its cfg's values

    server_state: DrainingServerState

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One attribute only: past 30 instance attributes CPython stops sharing the keys of
        # instance dicts, and every attribute access of the protocol gets slower (~4% a request).
        self._head_bytes = 0  # bytes received since the last request head was complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # One send per answer instead of uvicorn's two (head, body):
        # serve/workers/coalesced_writes.py.
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        cycle = self.cycle
        if cycle is None or not cycle.more_body:  # not inside a body: a head (or idle)
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.head_bytes:
                self._answer_error(_fields_too_large("max buffer headers"))
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no WebSocket or h2c here: served as a plain request, as Gunicorn does
        except httptools.HttpParserError as exc:
            error = exc.__context__  # what a callback below raised, if one did
            if not isinstance(error, HeadError):
                error = HeadError(400, "Bad Request", f"Invalid HTTP request: {exc}")
            self._answer_error(error)

    def _answer_error(self, error: HeadError) -> None:
        """Answer what Gunicorn answers for a bad head, as JSON, and close the connection."""
        client = self.client[0] if self.client else ""
        self.logger.warning("Invalid request from ip=%s: %s", client, error.message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's answer to the previous request is dropped
            cycle.message_event.set()
            if cycle.response_started:  # half an answer is on the wire: only closing is left
                self.transport.close()
                return
        self.transport.write(json_error_response(error.status, error.reason, error.message))
        self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url
        limit = self.limits.request_line
        # The request line is "METHOD SP URL SP HTTP/x.y": the URL is the only part that grows.
        if limit and len(self.url) > limit - len(" / HTTP/1.1"):
            size = len(self.parser.get_method()) + len(self.url) + len(" HTTP/1.1") + 1
            if size > limit:
                raise HeadError(
                    414, "URI Too Long", f"Request Line is too large ({size} > {limit})"
                )

    def on_headers_complete(self) -> None:
        limits = self.limits
        if self._head_bytes > limits.field_size or len(self.headers) > limits.fields:
            self._check_fields()  # else the whole head is smaller than one field may be
        self._head_bytes = 0
        self.server_state.requests_begun += 1
        super().on_headers_complete()
        if self.server_state.stopping or draining() or self._last_before_restart():
            self.cycle.keep_alive = False  # answered with "Connection: close"

    def _last_before_restart(self) -> bool:
        """This request reaches `max_requests`: the worker stops at its next tick, so its answer
        closes the connection, as Gunicorn's workers do (the client's next request opens a new
        one instead of racing the stopping worker on this one).

        Counted as requests begin, as Gunicorn counts: uvicorn's `total_requests` grows when an
        app's last (possibly empty) body message is sent, which a client holding the whole body
        already can outrun with its next request."""
        limit = self.config.limit_max_requests
        return limit is not None and self.server_state.requests_begun >= limit

    def _check_fields(self) -> None:
        """Gunicorn's limits on the number and the size of header fields."""
        limits = self.limits
        if len(self.headers) > limits.fields:
            raise _fields_too_large("limit request headers fields")
        for name, value in self.headers:
            if len(name) + len(value) + len(": \r\n") > limits.field_size:
                raise _fields_too_large("limit request headers fields size")

    def _unsupported_upgrade_warning(self) -> None:
        """An `Upgrade` header is ignored, as Gunicorn does: no advice to install WebSockets."""

    def shutdown(self) -> None:
        """The server stops: finish the request in progress, then close.

        A connection between requests stays open a moment (`STOP_KEEPALIVE_LINGER`, at most its
        keep-alive timeout), as Gunicorn's gthread worker does: a request its client may be
        sending already is answered with `Connection: close` instead of being cut off.
        """
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy or self.pipeline or self._head_bytes:  # a head half received counts as busy
            for cycle in [self.cycle, *(queued for queued, _ in self.pipeline)]:
                if cycle is not None:
                    cycle.keep_alive = False
            return
        deadline = self.loop.time() + STOP_KEEPALIVE_LINGER
        if self.timeout_keep_alive_task is not None:
            deadline = min(deadline, self.timeout_keep_alive_task.when())
            self.timeout_keep_alive_task.cancel()
        self.timeout_keep_alive_task = self.loop.call_at(deadline, self.timeout_keep_alive_handler)


class DrainingServerState(ServerState):
    """uvicorn's state shared by the connections of a server, plus whether it is stopping."""

    stopping = False  # set by DrainingServer.shutdown: every answer closes its connection
    requests_begun = 0  # heads received, counted against max_requests


class DrainingServer(Server):
    """uvicorn's Server with the drain of serve/workers/drain.py, reporting to Gunicorn's
    heartbeat."""

    def __init__(self, config: Any, grpc_server: Any = None) -> None:
        super().__init__(config)
        self.server_state = DrainingServerState()
        #: The worker's gRPC server (serve/grpc/server.py), drained alongside.
        self.grpc_server = grpc_server
        # The master SIGKILLs workers graceful_timeout after it sent SIGTERM: end a moment
        # before, cleanly, with a log line saying what was cut.
        self.graceful_timeout = max(0.0, config.timeout_graceful_shutdown - STOP_MARGIN_S)
        self.stop_deadline: float | None = None  # monotonic time the drain must end by
        self._ppid = os.getppid()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Stop signals go to `handle_exit`; unlike uvicorn's, none is raised again afterwards
        (that would kill the drained worker by the signal instead of a clean exit)."""
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.request_stop(sig, time.monotonic())

    def request_stop(self, sig: int, since: float) -> None:
        """Stop for signal `sig`, received at monotonic time `since`."""
        start_draining()
        if self.stop_deadline is None:
            self.stop_deadline = since + self.graceful_timeout
        self.should_exit = True
        if sig != signal.SIGTERM:
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if counter % 10 == 0 and os.getppid() != self._ppid:
            logger.info("Parent changed, shutting down")
            return True
        return False

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Close the listeners at once (taking what the backlog holds), finish what was taken."""
        loop = asyncio.get_running_loop()
        deadline = self.stop_deadline or time.monotonic() + self.graceful_timeout
        self.server_state.stopping = True
        taken = [] if self.force_exit else [c for c, _, _ in accept_backlog(sockets or [])]
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        if self.grpc_server is not None:  # refuses new calls at once, lets running ones finish
            grace = 0.0 if self.force_exit else max(0.0, deadline - time.monotonic())
            self.grpc_server.begin_stop(grace)
        logger.info(
            "%s: listeners closed, %d connection(s) open, %d taken from the backlog",
            "Quick shutdown" if self.force_exit else "Draining",
            len(self.server_state.connections),
            len(taken),
        )
        for client in taken:
            with contextlib.suppress(OSError):
                await loop.connect_accepted_socket(self._new_protocol, client)
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await self._wait_drained(deadline)
        if self.grpc_server is not None:
            await asyncio.to_thread(self.grpc_server.wait_stopped, deadline - time.monotonic())
        if not self.force_exit:
            await self.lifespan.shutdown()

    def _new_protocol(self) -> asyncio.Protocol:
        return self.config.http_protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )

    async def _wait_drained(self, deadline: float) -> None:
        """Wait for open connections and running requests, beating Gunicorn's heartbeat."""
        state = self.server_state
        last_beat = 0.0
        while (state.connections or state.tasks) and not self.force_exit:
            now = time.monotonic()
            if now >= deadline:
                # What is still running is ended with the process (see exit_after_drain).
                logger.warning(
                    "Graceful timeout: %d connection(s) and %d request(s) still open are cut",
                    len(state.connections),
                    len(state.tasks),
                )
                return
            if self.config.callback_notify is not None and now - last_beat >= 1.0:
                last_beat = now
                await self.config.callback_notify()
            await asyncio.sleep(0.02)


class AsyncWorker(UvicornWorker):
    """Gunicorn worker running uvicorn on the Flask app Gunicorn loaded, wrapped for ASGI."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "interface": "asgi3",
        "lifespan": "on",  # serve/http/fast_path.py answers it
        "ws": "none",
        "access_log": False,  # tapeserve writes its own JSON access log
        "server_header": False,
        "proxy_headers": False,  # the peer address stays the client's, as under gthread
    }

    drained = False  # set once the server finished: see exit_after_drain

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.http = type(
            "TapeserveHttpProtocol",
            (TapeserveHttpProtocol,),
            {"limits": HttpLimits.from_cfg(self.cfg)},
        )
        self.config.timeout_graceful_shutdown = self.cfg.graceful_timeout
        # uvicorn checks once a second whether to beat; beat every time, as gthread does (its
        # default, half the worker timeout, can leave two seconds between beats).
        self.config.timeout_notify = 0.5
        self._early_stop: tuple[int, float] | None = None  # (signal, when) before serving

    def init_signals(self) -> None:
        super().init_signals()
        # Until the server runs (the app is still being built), a stop signal is remembered.
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._remember_stop)
        # The master's SIGABRT for a missed heartbeat: Gunicorn's worker_abort hook, exit 1.
        signal.signal(signal.SIGABRT, self.handle_abort)

    def _remember_stop(self, sig: int, frame: FrameType | None) -> None:
        start_draining()
        self.alive = False
        self._early_stop = (sig, time.monotonic())

    def load_wsgi(self) -> None:
        super().load_wsgi()  # serve.app:create_app(): the worker's WorkerApp
        self.worker_app = self.wsgi
        self.wsgi = self.worker_app.asgi(threads=self.cfg.threads)

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        grpc_server = self.worker_app.grpc_server()
        if grpc_server is not None:  # its own threads, beside uvicorn's loop
            try:
                grpc_server.start()
            except Exception as exc:
                logger.error("gRPC server failed to start: %s", exc)
                sys.exit(Arbiter.WORKER_BOOT_ERROR)
        server = DrainingServer(self.config, grpc_server)
        if self._early_stop is not None:
            server.request_stop(*self._early_stop)
        # The plain sockets, not Gunicorn's wrappers: uvloop then detaches each as it closes its
        # listener, instead of Gunicorn logging EBADF for a descriptor already closed.
        await server.serve(sockets=[listener.sock for listener in self.sockets])
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def run(self) -> None:
        """Run the server; leave what a cut drain left running to the process exit.

        asyncio.run would cancel such requests one by one, each logging a traceback; the
        worker exits right after anyway (exit_after_drain).
        """
        loop_factory = self.config.get_loop_factory()
        loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._serve())
        self.drained = True
