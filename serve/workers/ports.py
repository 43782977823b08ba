"""The gRPC port, checked by the master before any worker binds it.

Every worker binds the gRPC port itself with SO_REUSEPORT (the kernel spreads connections over
them). That option would as silently let a second server, or a stale one of the same user,
share the port and take part of the traffic; so the master first binds it without the option,
which fails while anything else listens on it, and refuses to start. (SO_REUSEADDR on that
probe: connections of a previous run still in TIME_WAIT do not count.)
"""

from __future__ import annotations

import socket


def check_port_free(host: str, port: int) -> None:
    """Raise OSError (EADDRINUSE, ...) unless `host:port` can be bound; 0 is not checked."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
