"""The ASGI face of the HTTP front door, which the async Gunicorn worker (uvicorn) serves.

The inference routes (serve/http/routes.py: V2 `infer`, TF Serving `:predict`) are answered on
the event loop: the body is read and handed to the inference core (`serve_async`), which holds
the version, decodes, queues in the batcher and awaits its batch with no thread per request;
this adapter only turns the finished call into an HTTP answer and an access-log line. Every
other endpoint is the Flask app, run in a small thread pool (a2wsgi), so the API is defined once.
The Flask views hand the same routes to the same core with the same codecs, so both answer alike
(tests/serve/test_asgi_fast_path.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from a2wsgi import WSGIMiddleware

from serve.core.errors import failure_for
from serve.core.inference import InferenceCore
from serve.http.codecs import HttpBody, check_body_size, error_answer, http_answer
from serve.http.name_guard import check_model_path
from serve.http.routes import match_inference
from serve.observability import accesslog
from serve.protocol.types import ProtocolError


class TapeserveASGI:
    """ASGI 3 callable: inference through `core` on the loop, the rest through `wsgi_app` (the
    Flask app) in `threads` threads."""

    def __init__(self, core: InferenceCore, wsgi_app: Callable, threads: int = 8) -> None:
        self.core = core
        self.wsgi_app = wsgi_app
        self._wsgi = WSGIMiddleware(wsgi_app, workers=max(1, threads))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = match_inference(scope["path"])
            if found is not None:
                await self._infer(scope, receive, send, *found)
                return
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        await self._wsgi(scope, receive, send)

    async def _infer(
        self, scope: dict, receive: Any, send: Any, route: Any, name: str, version: str | None
    ) -> None:
        started = time.perf_counter()
        headers = _headers(scope)
        rid = accesslog.request_id_from(headers.get("x-request-id"))
        path = scope["path"]
        fields: dict[str, Any] = {}
        try:  # what Flask's before_request hook checks (not counted as an inference request)
            check_model_path(path)
        except ProtocolError as exc:
            status, answer_headers, body = error_answer(failure_for(exc))
        else:
            core = self.core

            async def read() -> HttpBody:
                placed = headers.get("inference-header-content-length")
                if route.codec.protocol != "v2" or headers.get("content-encoding"):
                    placed = None  # no tensors to place, or inflated into a new buffer anyway
                data = await _read_body(
                    receive, core.max_body_size, headers.get("content-length"), placed
                )
                return HttpBody(
                    data,
                    headers.get("content-encoding"),
                    headers.get("accept-encoding"),
                    headers.get("inference-header-content-length"),
                    core.max_body_size,
                )

            call = await core.serve_async(
                route.codec,
                name,
                version,
                read,
                credential=headers.get("authorization"),
                where=f"POST {path}",
            )
            fields = call.record()
            status, answer_headers, body = http_answer(call)
        out = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer_headers.items()
        ]
        out.append((b"content-length", str(len(body)).encode()))
        out.append((b"x-request-id", rid.encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})
        level = accesslog.level_for(path, status)
        if accesslog.log.isEnabledFor(level):
            client = scope.get("client")
            accesslog.write(
                level, rid, "POST", path, name, version, status, started,
                client[0] if client else None, fields,
            )  # fmt: skip


def _headers(scope: dict) -> dict[str, str]:
    """The request headers by lower-case name (repeated ones joined with ', ')."""
    out: dict[str, str] = {}
    for key, value in scope["headers"]:
        name = key.decode("latin-1")
        text = value.decode("latin-1")
        out[name] = f"{out[name]}, {text}" if name in out else text
    return out


#: Binary bodies from this size on are read into one buffer placed for their tensors.
PLACED_MIN_BYTES = 64 * 1024
#: Where the tensor data after the JSON header starts in such a buffer: a cache line.
TENSOR_ALIGNMENT = 64


async def _read_body(
    receive: Any, limit: int, length: str | None, header_length: str | None = None
) -> bytes | memoryview:
    """The whole body; 413 above `limit` (at once when Content-Length says so).

    A large body of the binary tensor extension (`header_length` given, Content-Length known)
    is copied once, chunk by chunk, into a buffer where its tensor data, after the JSON header,
    starts on a 64-byte boundary: the arrays decoded from it are views that onnxruntime reads
    in place (an unaligned float tensor, as a JSON header of any length leaves it, makes
    onnxruntime copy it again; joining the chunks would be a copy of its own)."""
    declared = _content_length(length)
    if declared is not None:
        check_body_size(declared, limit, declared=True)
        offset = _content_length(header_length)
        if declared >= PLACED_MIN_BYTES and offset is not None and offset <= declared:
            return await _read_placed(receive, declared, offset)
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


async def _read_placed(receive: Any, declared: int, offset: int) -> memoryview:
    """The `declared` bytes of the body in a buffer where byte `offset` is 64-byte aligned."""
    buffer = np.empty(declared + 2 * TENSOR_ALIGNMENT, np.uint8)
    pad = -(buffer.ctypes.data + offset) % TENSOR_ALIGNMENT
    view = memoryview(buffer)[pad : pad + declared]
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProtocolError(400, "the client closed the connection before the body ended")
        chunk = message.get("body", b"")
        if chunk:
            if size + len(chunk) > declared:
                raise ProtocolError(400, f"the body is longer than its Content-Length {declared}")
            view[size : size + len(chunk)] = chunk
            size += len(chunk)
        if not message.get("more_body", False):
            break
    if size != declared:
        raise ProtocolError(400, f"the body has {size} bytes, its Content-Length says {declared}")
    return view


def _content_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


async def _lifespan(receive: Any, send: Any) -> None:
    """Nothing to set up or tear down here: models load in the background at app creation."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
