"""Structured access logs: one JSON object per request on stderr, tied together by X-Request-ID.

A Flask extension (`init_app(app)`). Each request gets an id, taken from its `X-Request-ID`
header when that is a sane token, else generated, and the id is returned in the response's
`X-Request-ID` header so a client, a proxy and the server log can be matched up. Views add what
only they know (the executed batch size) with `annotate(...)`.

Requests answered with 5xx are logged at WARNING, the rest at INFO, so `--log-level warning`
(TAPESERVE_LOG_LEVEL) keeps only server-side failures and `error` silences the access log.
Health probes and Prometheus scrapes, which arrive every few seconds forever (and answer 503
while models load, by design), are logged at DEBUG only.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, g, request

HEADER = "X-Request-ID"
LOGGER_NAME = "tapeserve.access"
LEVELS = ("debug", "info", "warning", "error", "critical")

#: An incoming id is kept only if it is a short token of safe characters (uuids, trace ids,
#: ULIDs, ...); anything else is replaced, so a client cannot inject text into headers or logs.
_VALID_ID = re.compile(r"[A-Za-z0-9._:+=@/-]{1,128}")

#: Paths of probes and scrapes (HTTP paths, gRPC methods): logged at DEBUG whatever their status.
_PROBE_PATHS = (
    "/v2/health/",
    "/metrics",
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)

_LEVEL_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}

#: view_args keys under which the routes carry the model name and version.
_MODEL_KEYS = ("model_name", "model", "name")
_VERSION_KEYS = ("model_version", "version")

log = logging.getLogger(LOGGER_NAME)


class _JsonLineFormatter(logging.Formatter):
    """The record's message is already a JSON object; emit it alone on its line."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def parse_level(value: str) -> int:
    """Logging level for a name such as 'info'; ValueError naming the accepted names."""
    name = value.strip().lower()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {'|'.join(LEVELS)}, got {value!r}")
    return logging.getLevelName(name.upper())


def request_id() -> str | None:
    """The current request's id (None outside a request handled by an app with the extension)."""
    return g.get("request_id")


def annotate(**fields: Any) -> None:
    """Add fields to the current request's access-log line (e.g. batch_size=8)."""
    g.setdefault("access_fields", {}).update(fields)


def init_app(app: Flask, level: str | None = None) -> None:
    """Log every request of `app` as one JSON line; level from `level` or TAPESERVE_LOG_LEVEL."""
    log.setLevel(parse_level(level or os.environ.get("TAPESERVE_LOG_LEVEL", "info")))
    log.propagate = False
    if not any(isinstance(h.formatter, _JsonLineFormatter) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonLineFormatter())
        log.addHandler(handler)
    app.before_request(_start)
    app.after_request(_finish)


def _start() -> None:
    ctx = g._get_current_object()  # one context lookup instead of one per attribute
    ctx.request_id = request_id_from(request.headers.get(HEADER, ""))
    ctx.request_start = time.perf_counter()


def request_id_from(incoming: str | None) -> str:
    """The client's X-Request-ID when it is a safe token, else a fresh one."""
    return incoming if incoming and _VALID_ID.fullmatch(incoming) else new_request_id()


def _reseed() -> None:
    """A fresh random prefix and counter (at import and in every forked child)."""
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = uuid.uuid4().hex[:16], itertools.count()


_id_prefix = ""
_id_counter: Iterator[int] = itertools.count()
_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    """32 hex digits, unique across workers and restarts: a random prefix drawn once per process
    and a counter (a uuid4 per request costs a getrandom() call)."""
    return f"{_id_prefix}{next(_id_counter):016x}"


def level_for(path: str, status: int) -> int:
    """DEBUG for probes and scrapes, WARNING for 5xx, INFO for the rest."""
    if path.startswith(_PROBE_PATHS):
        return logging.DEBUG
    return logging.WARNING if status >= 500 else logging.INFO


def _finish(response: Response) -> Response:
    ctx = g._get_current_object()
    rid = ctx.get("request_id") or new_request_id()
    response.headers[HEADER] = rid
    status = response.status_code
    req = request._get_current_object()  # type: ignore[attr-defined]
    level = level_for(req.path, status)
    if not log.isEnabledFor(level):
        return response
    args = req.view_args or {}
    write(
        level,
        rid,
        req.method,
        req.path,
        _first(args, _MODEL_KEYS),
        _first(args, _VERSION_KEYS),
        status,
        ctx.get("request_start"),
        req.remote_addr,
        ctx.get("access_fields", ()),
    )
    return response


def write(
    level: int,
    rid: str,
    method: str,
    path: str,
    model: str | None,
    version: str | None,
    status: int,
    start: float | None,
    remote_addr: str | None,
    fields: Any = (),
) -> None:
    """Log one access line (every front end writes the same fields); `start` is perf_counter()."""
    now = time.time()
    entry: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        + f".{int(now * 1000) % 1000:03d}Z",
        "level": _LEVEL_NAMES[level],
        "request_id": rid,
        "method": method,
        "path": path,
        "model": model,
        "version": version,
        "status": status,
        "latency_ms": None if start is None else round((time.perf_counter() - start) * 1e3, 3),
        "batch_size": None,
        "remote_addr": remote_addr,
        "pid": os.getpid(),  # the Gunicorn worker that answered
    }
    entry.update(fields)
    log.log(level, json.dumps(entry, separators=(",", ":"), default=str))


def _first(args: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        if args.get(key) is not None:
            return str(args[key])
    return None
