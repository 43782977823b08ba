"""The ASGI face of the tapeserve app, which the async Gunicorn worker (uvicorn) serves.

The hot path - inference: V2 `infer` and TF Serving `:predict` - is answered on the event loop:
the body is read, decoded and validated, the request queued in the model's batcher and awaited
while a runner thread computes its batch, the answer encoded and sent, with no thread per request
and HTTP parsed in C. Every other endpoint is the Flask app, run in a small thread pool
(a2wsgi), so the API is defined once.

Both paths answer inference alike because they share every step: the name guard, the inference
token, `hold_version`, the protocol's `prepare_*` / `answer_*` pair, the error table
`error_for`, the request metrics and the access-log line.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from a2wsgi import WSGIMiddleware
from flask import Flask

from serve.http.admin import bearer_refusal
from serve.http.name_guard import check_model_path
from serve.http.views.common import (
    batch_rows,
    check_body_size,
    count_request,
    error_for,
    hold_version,
    is_unexpected,
)
from serve.http.views.tfserving import answer_predict, prepare_predict
from serve.http.views.v2 import answer_infer, prepare_infer
from serve.observability import accesslog, metrics
from serve.protocol import v2
from serve.protocol.encoding import decode_body, encode_body
from serve.protocol.types import ProtocolError

log = logging.getLogger("tapeserve.api")

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


@dataclass(frozen=True)
class _Route:
    """An inference route of the Flask app and the steps its view takes."""

    pattern: re.Pattern
    protocol: str  # the `protocol` label of the request metrics
    prepare: Callable  # (mv, body, header_length) -> (request, feeds, deadline)
    answer: Callable  # (mv, request, outputs) -> (body, headers)
    compress: bool  # the view compresses its answer as Accept-Encoding allows


#: The inference routes of serve.http.views (Flask's default converter: one path segment; TF Serving
#: carries `name:predict` in one segment, split at the first ':').
_ROUTES = (
    _Route(
        re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer"),
        "v2", prepare_infer, answer_infer, True,
    ),
    _Route(
        re.compile(r"/v1/models/([^/:]+)(?:/versions/([^/:]+))?:predict"),
        "tfserving", prepare_predict, answer_predict, False,
    ),
)  # fmt: skip


class TapeserveASGI:
    """ASGI 3 callable over the Flask app `flask_app` (`threads` run the Flask endpoints)."""

    def __init__(self, flask_app: Flask, threads: int = 8) -> None:
        self.flask_app = flask_app
        self._wsgi = WSGIMiddleware(flask_app, workers=max(1, threads))
        state = flask_app.extensions["tapeserve"]
        self._registry = state.registry
        self._limit = state.settings.max_body_size
        admin = flask_app.extensions.get("tapeserve.admin")
        self._token = admin.inference_token if admin is not None else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for route in _ROUTES:
                match = route.pattern.fullmatch(path)
                if match is not None:
                    await self._infer(scope, receive, send, route, match[1], match[2])
                    return
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        await self._wsgi(scope, receive, send)

    async def _infer(
        self, scope: dict, receive: Any, send: Any, route: _Route, name: str, version: str | None
    ) -> None:
        started = time.perf_counter()
        headers = _headers(scope)
        rid = accesslog.request_id_from(headers.get("x-request-id"))
        fields: dict[str, Any] = {}
        status, out_headers, body = await self._answer(
            scope, receive, headers, route, name, version, fields
        )
        out_headers.append((b"content-length", str(len(body)).encode()))
        out_headers.append((b"x-request-id", rid.encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": body})
        path = scope["path"]
        level = accesslog.level_for(path, status)
        if accesslog.log.isEnabledFor(level):
            client = scope.get("client")
            accesslog.write(
                level, rid, "POST", path, name, version, status, started,
                client[0] if client else None, fields,
            )  # fmt: skip

    async def _answer(
        self,
        scope: dict,
        receive: Any,
        headers: dict[str, str],
        route: _Route,
        name: str,
        version: str | None,
        fields: dict[str, Any],
    ) -> Answer:
        """Status, headers and body of one infer request; never raises."""
        try:  # what Flask's before_request hooks check (not counted as inference requests)
            check_model_path(scope["path"])
            if self._token is not None:
                refused = bearer_refusal(
                    headers.get("authorization", ""), self._token, "inference API"
                )
                if refused is not None:
                    return _error(*refused)
        except ProtocolError as exc:
            return _error(exc.status, exc.message, None)
        started = time.perf_counter()
        ctx: dict[str, Any] = {}
        metrics.INFLIGHT_REQUESTS.inc()
        try:
            answer = await self._run(receive, headers, route, ctx, name, version, fields)
        except Exception as exc:
            if is_unexpected(exc):
                log.exception("unexpected error while serving POST %s", scope["path"])
            answer = _error(*error_for(exc))
        finally:  # also when the task is cancelled (a worker stopping at once)
            metrics.INFLIGHT_REQUESTS.dec()
            if "mv" in ctx:
                ctx["mv"].release()  # a swap or unload waiting for this version may go on
        model, ver = count_request(ctx, route.protocol, answer[0], started)
        if "mv" in ctx:
            fields["model"], fields["version"] = model, ver
        return answer

    async def _run(
        self,
        receive: Any,
        headers: dict[str, str],
        route: _Route,
        ctx: dict,
        name: str,
        version: str | None,
        fields: dict[str, Any],
    ) -> Answer:
        mv = hold_version(self._registry, ctx, name, version)
        body = await _read_body(receive, self._limit, headers.get("content-length"))
        body = decode_body(body, headers.get("content-encoding"), self._limit)
        header_length = headers.get("inference-header-content-length")
        req, feeds, deadline = route.prepare(mv, body, header_length)
        fields["batch_size"] = batch_rows(mv, feeds)
        results = await mv.batcher.infer_async(feeds, deadline)  # type: ignore[union-attr]
        body, answer_headers = route.answer(mv, req, results)
        coding = None
        if route.compress:
            body, coding = encode_body(body, headers.get("accept-encoding"))
        out = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer_headers.items()
        ]
        if coding:
            out.append((b"content-encoding", coding.encode()))
            out.append((b"vary", b"Accept-Encoding"))
        return 200, out, body


def _headers(scope: dict) -> dict[str, str]:
    """The request headers by lower-case name (repeated ones joined with ', ')."""
    out: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = key.decode("latin-1")
        text = value.decode("latin-1")
        out[name] = f"{out[name]}, {text}" if name in out else text
    return out


async def _read_body(receive: Any, limit: int, length: str | None) -> bytes:
    """The whole body; 413 above `limit` (at once when Content-Length says so)."""
    declared = _content_length(length)
    if declared is not None:
        check_body_size(declared, limit, declared=True)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError(400, "the client closed the connection before the body ended")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            check_body_size(size, limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _error(status: int, message: str, extra: dict[str, str] | None) -> Answer:
    headers = [(b"content-type", b"application/json")]
    for key, value in (extra or {}).items():
        headers.append((key.lower().encode("latin-1"), value.encode("latin-1")))
    return status, headers, v2.error_body(message)


async def _lifespan(receive: Any, send: Any) -> None:
    """Nothing to set up or tear down here: models load in the background at app creation."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def wrap(flask_app: Flask, threads: int = 8) -> TapeserveASGI:
    """The ASGI app the async worker serves for the Flask app Gunicorn loaded."""
    return TapeserveASGI(flask_app, threads)
