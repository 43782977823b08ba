"""The inference routes as Flask views: thin adapters that hand the request to the core.

One view per route of serve/http/routes.py (V2 `infer`, TF Serving `:predict`); the async
worker answers the same routes on its event loop instead (serve/http/fast_path.py).
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Response, request

from serve.http.codecs import HttpBody, http_answer
from serve.http.routes import INFERENCE_ROUTES, InferenceRoute
from serve.http.views.common import core, read_raw_body
from serve.observability import accesslog
from serve.protocol.v2 import HEADER_LENGTH

bp = Blueprint("inference", __name__)


def _read() -> HttpBody:
    headers = request.headers
    return HttpBody(
        read_raw_body(),
        headers.get("Content-Encoding"),
        headers.get("Accept-Encoding"),
        headers.get(HEADER_LENGTH),
        core().max_body_size,
    )


def _view(route: InferenceRoute) -> Callable[..., Response]:
    codec = route.codec

    def view(name: str, version: str | None = None) -> Response:
        call = core().serve(
            codec,
            name,
            version,
            _read,
            credential=request.headers.get("Authorization"),
            where=f"POST {request.path}",
        )
        accesslog.annotate(**call.record())
        status, headers, body = http_answer(call)
        return Response(body, status, headers)

    view.__name__ = route.operation
    return view


for _route in INFERENCE_ROUTES:
    bp.add_url_rule(_route.rule, _route.operation, _view(_route), methods=["POST"])
