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

The async worker (serve/async_worker.py) keeps the same promises on an event loop; the draining
flag, the error shape and the clean exit after a drain are shared from here.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import threading
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

_DRAINING = threading.Event()


def draining() -> bool:
    """True once this worker received SIGTERM: it finishes what it has, then exits."""
    return _DRAINING.is_set()


def start_draining() -> None:
    """Called from the stop-signal handlers: readiness answers 503 from now on."""
    _DRAINING.set()


def json_error_response(status_int: int, reason: str, mesg: str) -> bytes:
    """A whole HTTP/1.1 answer with body `{"error": ...}` that closes the connection."""
    body = json.dumps({"error": f"{reason}: {mesg}" if mesg else reason}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Gunicorn's own error answers, as `{"error": ...}` JSON; the connection then closes."""
    util.write_nonblock(sock, json_error_response(status_int, reason, mesg))


class DrainingThreadWorker(ThreadWorker):
    """`ThreadWorker` that reports draining at once and refuses new connections while it drains."""

    drained = False  # set once run() returned: see exit_after_drain

    def init_process(self) -> None:
        util.write_error = _write_json_error  # used by handle_error for header-level errors
        super().init_process()

    def run(self) -> None:
        super().run()
        self.drained = True  # everything answered, or the grace period ran out

    def handle_exit(self, sig, frame) -> None:
        start_draining()
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


def accept_backlog(listeners: list) -> list[tuple[socket.socket, Any, Any]]:
    """(client, address, listener) of every connection the kernel already completed.

    A stopping worker takes these before closing its listeners: closing would reset them.
    """
    taken = []
    for listener in listeners:
        listener.setblocking(False)
        while True:
            try:
                client, address = listener.accept()
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                break  # EAGAIN: the backlog is empty
            taken.append((client, address, listener))
    return taken


def exit_after_drain(worker: object) -> None:
    """Gunicorn's `worker_exit` hook: end the worker right away, skipping interpreter teardown.

    Interpreter teardown with live onnxruntime sessions aborts the process (SIGABRT from a C++
    destructor) after every request was already answered, or hangs in one (a worker whose app
    failed to build never exits, so the master never reports the boot failure); skipping it
    makes the exit clean and quick, and also ends threads still stuck in a request when the
    grace period ran out. A drained worker exits 0; one leaving through `sys.exit` (Gunicorn's
    boot and load errors, quick shutdown) keeps that status; any other end is left alone.
    """
    if getattr(worker, "drained", False):
        status = 0
    else:
        leaving = sys.exc_info()[1]  # the SystemExit Gunicorn's spawn_worker is propagating
        if not isinstance(leaving, SystemExit):
            return
        if leaving.code is None or isinstance(leaving.code, int):
            status = leaving.code or 0
        else:
            print(leaving.code, file=sys.stderr)  # what sys.exit("message") prints
            status = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
