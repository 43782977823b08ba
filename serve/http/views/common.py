"""What every view shares: the server state, JSON answers, body reading, error mapping, metrics."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from serve.core.batcher import DeadlineExceeded, QueueFull
from serve.lifecycle.registry import ModelNotFound, ModelNotReady, ModelRegistry, ModelVersion
from serve.lifecycle.runtime import InferenceError
from serve.observability import accesslog, metrics
from serve.protocol import jsondata
from serve.protocol.encoding import decode_body, encode_body
from serve.protocol.types import ProtocolError
from serve.settings import Settings

log = logging.getLogger("tapeserve.api")

RETRY_AFTER_SECONDS = "1"


@dataclass
class Server:
    """Per-worker state the views reach through `server()`."""

    settings: Settings
    registry: ModelRegistry


def server() -> Server:
    return current_app.extensions["tapeserve"]


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsondata.dumps(doc), status, headers, mimetype="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """`{"error": message}`, the one error shape of every endpoint."""
    return json_response({"error": message}, status, headers)


def read_body() -> bytes:
    """The request body, undone of its Content-Encoding, refused (413) above --max-body-size.

    Reads `wsgi.input` directly: Flask's `get_data()` costs about twice as much per request.
    """
    limit = server().settings.max_body_size
    length = request.content_length
    if length is not None:
        check_body_size(length, limit, declared=True)
    stream = request.environ["wsgi.input"]
    body = stream.read(length) if length is not None else stream.read(limit + 1)
    check_body_size(len(body), limit)
    return decode_body(body, request.headers.get("Content-Encoding"), limit)


def check_body_size(size: int, limit: int, declared: bool = False) -> None:
    """413 when a body (`declared` by Content-Length, or as read so far) exceeds `limit`."""
    if size > limit:
        if declared:
            raise ProtocolError(413, f"request body of {size} bytes exceeds the {limit}-byte limit")
        raise ProtocolError(413, f"request body exceeds the {limit}-byte limit")


def encoded(body: bytes, headers: dict[str, str], status: int = 200) -> Response:
    """A response body compressed as the client's Accept-Encoding allows."""
    body, encoding = encode_body(body, request.headers.get("Accept-Encoding"))
    response = Response(body, status, headers)
    if encoding:
        response.headers["Content-Encoding"] = encoding
        response.headers["Vary"] = "Accept-Encoding"
    return response


def error_for(exc: Exception) -> tuple[int, str, dict[str, str] | None]:
    """Status, message and extra headers for what can go wrong while serving a request
    (protocols.md section 3); every front end answers errors through this one table.

    Unexpected exceptions map to 500 (the caller logs them: see `is_unexpected`).
    """
    if isinstance(exc, ProtocolError):
        return exc.status, exc.message, None
    if isinstance(exc, ModelNotFound):
        return 404, str(exc), None
    if isinstance(exc, ModelNotReady):
        return 503, str(exc), {"Retry-After": RETRY_AFTER_SECONDS} if exc.loading else None
    if isinstance(exc, QueueFull):
        return 503, str(exc), {"Retry-After": RETRY_AFTER_SECONDS}
    if isinstance(exc, DeadlineExceeded):
        return 504, str(exc), None
    if isinstance(exc, InferenceError):
        return exc.status, str(exc), None
    return 500, f"internal error ({type(exc).__name__}); see the server log", None


_EXPECTED = (
    ProtocolError,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    DeadlineExceeded,
    InferenceError,
)


def is_unexpected(exc: Exception) -> bool:
    """True for a fault of the server (a 500 worth a traceback in the log)."""
    return not isinstance(exc, _EXPECTED)


def failure(exc: Exception) -> Response:
    """The error answer for `exc` (see `error_for`), logging unexpected ones with a traceback."""
    if is_unexpected(exc):
        log.exception("unexpected error while serving %s %s", request.method, request.path)
    return error_response(*error_for(exc))


def deadline_for(mv: ModelVersion, timeout_us: Any) -> float | None:
    """Monotonic deadline from `parameters.timeout` (microseconds) or default_timeout_ms."""
    if timeout_us is not None:
        if isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us < 0:
            raise ProtocolError(
                400,
                f"parameter 'timeout' must be a non-negative integer (microseconds), "
                f"got {timeout_us!r}",
            )
        if timeout_us > 0:
            return time.monotonic() + timeout_us / 1e6
    if mv.config.default_timeout_ms > 0:
        return time.monotonic() + mv.config.default_timeout_ms / 1000.0
    return None


def resolve(ctx: dict, name: str, version: str | None) -> ModelVersion:
    """The model version to serve, noted in `ctx` for the request metrics, held until answered."""
    return hold_version(server().registry, ctx, name, version)


def hold_version(
    registry: ModelRegistry, ctx: dict, name: str, version: str | None
) -> ModelVersion:
    """`resolve` for any front end: look the version up, hold it, note it in `ctx`."""
    if name in registry.models:
        ctx["model"] = name
    try:
        mv = registry.version(name, version)
        while not mv.hold():  # swapped out since the lookup (serve.lifecycle.control): look again
            mv = registry.version(name, version)
    except ModelNotReady as exc:
        reason = "loading" if exc.loading else "unavailable"
        metrics.REJECTED_REQUESTS.labels(name, reason).inc()
        raise
    ctx["mv"] = mv
    return mv


def batch_rows(mv: ModelVersion, feeds: dict[str, np.ndarray]) -> int:
    """Rows a request adds to a batch (1 for models that do not batch), for the access log."""
    return next(iter(feeds.values())).shape[0] if mv.batching and feeds else 1


def run_model(mv: ModelVersion, feeds: dict[str, np.ndarray], deadline: float | None) -> list:
    """Run the request through the model's batcher; its outputs in signature order."""
    accesslog.annotate(batch_size=batch_rows(mv, feeds))
    return mv.batcher.infer(feeds, deadline)  # type: ignore[union-attr]


def observed(protocol: str, handler: Callable[..., Response]) -> Callable[..., Response]:
    """Wrap an inference view: in-flight gauge, request counter and duration, error mapping.

    The handler sets `ctx["mv"]` once it resolved the model version (or `ctx["model"]` for a
    model of the repository that cannot serve), so the labels name it; requests for models not
    in the repository are counted with empty model/version labels (bounded series).
    """

    def view(**kwargs: Any) -> Response:
        started = time.perf_counter()
        ctx: dict[str, Any] = {}
        metrics.INFLIGHT_REQUESTS.inc()
        try:
            response = handler(ctx, **kwargs)
        except Exception as exc:
            response = failure(exc)
        finally:
            metrics.INFLIGHT_REQUESTS.dec()
        if "mv" in ctx:
            ctx["mv"].release()
        model, version = count_request(ctx, protocol, response.status_code, started)
        if "mv" in ctx:
            accesslog.annotate(model=model, version=version)
        return response

    view.__name__ = handler.__name__
    view.__doc__ = handler.__doc__
    return view


#: The labelled children of the request metrics, looked up once per label set (bounded: models x
#: versions x protocols x status codes).
_request_counter = functools.lru_cache(maxsize=4096)(metrics.REQUESTS.labels)
_request_duration = functools.lru_cache(maxsize=1024)(metrics.REQUEST_DURATION.labels)


def count_request(ctx: dict, protocol: str, status: int, started: float) -> tuple[str, str]:
    """Count an answered inference request (and its duration since `started`, perf_counter())
    under the version `ctx` names; returns its (model, version) labels. Every front end counts
    through here."""
    mv = ctx.get("mv")
    model, version = (mv.name, str(mv.version)) if mv else (ctx.get("model", ""), "")
    _request_counter(model, version, protocol, str(status)).inc()
    if mv:
        _request_duration(model, version, protocol).observe(time.perf_counter() - started)
    return model, version


def register_error_handlers(app: Flask) -> None:
    """JSON for every error Flask raises itself (404 route, 405 method, 413 body, ...)."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        headers = {}
        if exc.code == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif exc.code == 405:
            allowed = exc.get_response().headers.get("Allow", "")
            methods = ", ".join(m for m in allowed.split(", ") if m not in ("HEAD", "OPTIONS"))
            message = f"method {request.method} is not allowed on {request.path}; use {methods}"
            headers["Allow"] = allowed
        elif exc.code == 413:
            limit = server().settings.max_body_size
            message = f"request body exceeds the {limit}-byte limit"
        else:
            message = f"{exc.name}: {exc.description}"
        return error_response(exc.code or 500, message, headers)

    @app.errorhandler(ProtocolError)
    def protocol_error(exc: ProtocolError) -> Response:
        return error_response(exc.status, exc.message)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        return failure(exc)
