"""Readiness of the whole server, not of the one worker that answers the probe.

Gunicorn workers load their models independently, and a readiness probe lands on whichever
worker accepts the connection. Without this, a server answers ready while another worker is
still loading, and the requests that land there get 503. Workers share TAPESERVE_RUNTIME_DIR
(made by serve.gunicorn_conf); each writes `loaded-<pid>` once all its models reached a final
state, and the server is ready when as many live workers as configured have done so.
"""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = "loaded-"


def mark_loaded(runtime_dir: str | None) -> None:
    """Record that this worker has finished loading (atomically: write, then rename)."""
    if not runtime_dir:
        return
    final = Path(runtime_dir) / f"{PREFIX}{os.getpid()}"
    temp = final.with_name(f".{final.name}.tmp")
    temp.write_text("")
    os.replace(temp, final)


def forget(runtime_dir: str | None, pid: int) -> None:
    """Drop a worker's marker when it exits (its replacement loads afresh)."""
    if runtime_dir:
        (Path(runtime_dir) / f"{PREFIX}{pid}").unlink(missing_ok=True)


def loaded_workers(runtime_dir: str) -> int:
    """How many live workers have finished loading."""
    count = 0
    for entry in os.scandir(runtime_dir):
        if entry.name.startswith(PREFIX) and _alive(int(entry.name[len(PREFIX) :])):
            count += 1
    return count


def all_workers_loaded(runtime_dir: str | None, workers: int) -> bool:
    """True when every configured worker has loaded (always True outside Gunicorn)."""
    if not runtime_dir or not os.path.isdir(runtime_dir):
        return True
    return loaded_workers(runtime_dir) >= workers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
