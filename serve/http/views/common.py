"""What every Flask view shares: the inference core, JSON answers, body reading, errors."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from serve.core.errors import failure_for, is_unexpected
from serve.core.inference import InferenceCore
from serve.http.codecs import check_body_size, error_answer
from serve.protocol import jsondata, v2
from serve.protocol.encoding import decode_body

log = logging.getLogger("tapeserve.api")


def core() -> InferenceCore:
    """This worker's inference core, which every view goes through."""
    return current_app.extensions["tapeserve"]


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsondata.dumps(doc), status, headers, mimetype="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """`{"error": message}`, the one error shape of every endpoint."""
    return Response(v2.error_body(message), status, headers, mimetype="application/json")


def read_raw_body() -> bytes:
    """The request body as sent, refused (413) above --max-body-size.

    Reads `wsgi.input` directly: Flask's `get_data()` costs about twice as much per request.
    """
    limit = core().max_body_size
    length = request.content_length
    if length is not None:
        check_body_size(length, limit, declared=True)
    stream = request.environ["wsgi.input"]
    body = stream.read(length) if length is not None else stream.read(limit + 1)
    check_body_size(len(body), limit)
    return body


def read_body() -> bytes:
    """The request body undone of its Content-Encoding (413 above --max-body-size)."""
    return decode_body(
        read_raw_body(), request.headers.get("Content-Encoding"), core().max_body_size
    )


def failure(exc: Exception) -> Response:
    """The error answer for `exc` (the core's one table), logging unexpected ones."""
    if is_unexpected(exc):
        log.exception("unexpected error while serving %s %s", request.method, request.path)
    status, headers, body = error_answer(failure_for(exc))
    return Response(body, status, headers)


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
            message = f"request body exceeds the {core().max_body_size}-byte limit"
        else:
            message = f"{exc.name}: {exc.description}"
        return error_response(exc.code or 500, message, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        return failure(exc)
