"""Whether this worker serves: live, ready, draining. Every front door's health answers read it.

`start_draining()` is called by the worker's stop-signal handler (serve/workers/), possibly
before the app exists: the flag belongs to the process, not to one object.
"""

from __future__ import annotations

import threading

_DRAINING = threading.Event()


def draining() -> bool:
    """True once this worker received SIGTERM: it finishes what it has, then exits."""
    return _DRAINING.is_set()


def start_draining() -> None:
    """Called from the stop-signal handlers: readiness answers 503 from now on."""
    _DRAINING.set()
