"""The Gunicorn worker tapeserve runs: gthread, with a drain that loses no request on SIGTERM.

Gunicorn's gthread worker already finishes in-flight requests (bodies still arriving included)
within `graceful_timeout`, and answers requests that still arrive on kept-alive connections with
`Connection: close`. Two gaps remain, closed here:

- Readiness: `/v2/health/ready` must answer 503 the moment SIGTERM arrives, so a load balancer
  stops routing here while the drain runs. `draining()` turns true in the signal handler.
- New connections: a stopping gthread worker stops accepting but keeps its listening socket open
  until the drain ends, so a client that connects meanwhile is accepted by the kernel, waits out
  the whole drain, then is reset. This worker accepts what is already in the backlog (served
  with `Connection: close`) and closes its listener at once: later clients are refused at
  connect, which every client can retry safely, instead of hanging.

Header errors Gunicorn answers itself (request line or header fields too large, bad syntax) get
the JSON error shape of every other endpoint instead of Gunicorn's HTML page.

The async worker (serve/workers/async_worker.py) keeps the same promises on an event loop; the
draining flag, the error shape and the clean exit after a drain are shared (serve/workers/drain.py).
"""

from __future__ import annotations

import socket
import sys
import time

from gunicorn import util
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import TConn, ThreadWorker

from serve.core.health import start_draining
from serve.workers.drain import accept_backlog, json_error_response


def _write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Gunicorn's own error answers, as `{"error": ...}` JSON; the connection then closes."""
    util.write_nonblock(sock, json_error_response(status_int, reason, mesg))


class DrainingThreadWorker(ThreadWorker):
    """`ThreadWorker` that reports draining at once and refuses new connections while it drains."""

    drained = False  # set once run() returned: see exit_after_drain

    def init_process(self) -> None:
        util.write_error = _write_json_error  # used by handle_error for header-level errors
        super().init_process()

    grpc_server = None  # the worker's gRPC server (serve/grpc/server.py)

    def run(self) -> None:
        self.grpc_server = self.wsgi.grpc_server()  # self.wsgi: serve.app:create_app()'s app
        if self.grpc_server is not None:
            try:
                self.grpc_server.start()
            except Exception as exc:
                self.log.error("gRPC server failed to start: %s", exc)
                sys.exit(Arbiter.WORKER_BOOT_ERROR)
        try:
            super().run()
        finally:
            if self.grpc_server is not None:
                stop_by = self.stop_by or time.monotonic() + self.cfg.graceful_timeout
                self.grpc_server.begin_stop(max(0.0, stop_by - time.monotonic()))
                self.grpc_server.wait_stopped(stop_by - time.monotonic())
        self.drained = True  # everything answered, or the grace period ran out

    stop_by: float | None = None  # when the master kills this worker after SIGTERM (monotonic)

    def handle_exit(self, sig, frame) -> None:
        start_draining()
        self.stop_by = time.monotonic() + max(0.0, self.cfg.graceful_timeout - 0.25)
        if self.grpc_server is not None:  # refuses new calls now, beside the HTTP drain
            self.grpc_server.begin_stop(self.stop_by - time.monotonic())
        super().handle_exit(sig, frame)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            self._accept_backlog_and_close()

    def _accept_backlog_and_close(self) -> None:
        """Serve the connections the kernel already completed, then close the listeners."""
        listeners = [listener for listener in self.sockets if listener.sock is not None]
        for client, address, listener in accept_backlog(listeners):
            client.setblocking(True)
            self.nr_conns += 1
            self.enqueue_req(TConn(self.cfg, client, address, listener.getsockname()))
        for listener in listeners:
            listener.close()
