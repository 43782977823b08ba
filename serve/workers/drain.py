"""The drain both worker classes share: taking the listen backlog, the error answers, the exit.

On SIGTERM a worker turns `serve.core.health.draining()` true at once (readiness answers 503),
takes the connections the kernel already completed (`accept_backlog`) before it closes its
listeners, and answers everything it took; Gunicorn's `worker_exit` hook then ends the process
cleanly (`exit_after_drain`). Header errors are answered as `{"error": ...}` JSON
(`json_error_response`) by both classes.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from typing import Any

from serve.protocol.v2 import error_body


def json_error_response(status_int: int, reason: str, mesg: str) -> bytes:
    """A whole HTTP/1.1 answer with body `{"error": ...}` that closes the connection."""
    body = error_body(f"{reason}: {mesg}" if mesg else reason)
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


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
