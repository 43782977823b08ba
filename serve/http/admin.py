"""The admin plane: model load, unload and upload, locked behind a bearer token.

Endpoints (the V2 model-repository extension, plus an upload):

    POST /v2/repository/models/{m}/load      explicit mode; optional Triton-style body
         {"parameters": {"config": "<config.json text>", "file:<v>/model.onnx": "<base64>"}}
    POST /v2/repository/models/{m}/unload    explicit mode
    POST /v2/repository/models/{m}/versions/{v}
         body: the raw ONNX file (Content-Type: application/octet-stream); poll or explicit mode

`POST /v2/repository/index` stays public and read-only (serve.http.views.v2). The requests carry
`Authorization: Bearer <admin token>`; what is checked and guaranteed is the core's admin plane
(serve/core/admin.py), shared with gRPC. This module only reads the HTTP requests.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable

from flask import Blueprint, Flask, Response, current_app, request

from serve.core.admin import AdminPlane, load_parameters
from serve.http.views.common import json_response, read_body
from serve.lifecycle.registry import Model
from serve.protocol.types import ProtocolError

bp = Blueprint("admin", __name__)


def init_app(app: Flask, plane: AdminPlane) -> None:
    """Register the admin endpoints over `plane`."""
    app.extensions["tapeserve.admin"] = plane
    app.register_blueprint(bp)


def _plane() -> AdminPlane:
    return current_app.extensions["tapeserve.admin"]


def admin_only(view: Callable[..., Response]) -> Callable[..., Response]:
    """The token first, then the name and version (400). A malformed model name in the URL was
    already refused, for everyone, by the name guard: that reveals nothing."""

    def wrapped(**kwargs: str) -> Response:
        _plane().authorize(
            request.headers.get("Authorization"), kwargs["name"], kwargs.get("version")
        )
        return view(**kwargs)  # errors: the core's one table (serve.http.views.common.failure)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


@bp.post("/v2/repository/models/<name>/load")
@admin_only
def load(name: str) -> Response:
    """Load (or reload) a model; files in the body are vetted and written first."""
    files, config = _parse_load_body()
    return _model_answer(_plane().load(name, files, config), 200)


@bp.post("/v2/repository/models/<name>/unload")
@admin_only
def unload(name: str) -> Response:
    """Unload a model in every worker; queued requests finish first."""
    _plane().unload(name)
    return json_response({"name": name, "state": "UNLOADED"})


@bp.post("/v2/repository/models/<name>/versions/<version>")
@admin_only
def upload(name: str, version: str) -> Response:
    """Write a new version from the raw ONNX body, vetted before it enters the repository."""
    content_type = (request.mimetype or "").lower()
    if content_type != "application/octet-stream":
        raise ProtocolError(
            415,
            "upload the ONNX file as the raw body with Content-Type: application/octet-stream "
            f"(got {content_type or 'none'})",
        )
    model = _plane().upload(name, version, read_body())
    if model is not None:
        return _model_answer(model, 201)
    interval = _plane().controller.settings.poll_interval
    return json_response(
        {
            "name": name,
            "version": str(int(version)),
            "state": "PENDING",
            "message": f"version {int(version)} written; the repository poll loads it within "
            f"about {2 * interval:g} s",
        },
        202,
    )


def _model_answer(model: Model, status: int) -> Response:
    rows = [
        {"version": str(mv.version), "state": mv.state.value, "reason": mv.reason}
        for mv in model.versions.values()
    ]
    return json_response({"name": model.name, "versions": rows}, status)


def _parse_load_body() -> tuple[dict[int, dict[str, bytes]], dict | None]:
    """Triton's load parameters in a JSON body: `config` (JSON text) and `file:<version>/<name>`
    (base64)."""
    body = read_body()
    if not body.strip():
        return {}, None
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(400, f"load request body is not valid JSON: {exc}") from None
    params = doc.get("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise ProtocolError(400, 'load request body must be {"parameters": {...}}')
    config = None
    files: dict[str, bytes] = {}
    for key, value in params.items():
        if key == "config":
            if not isinstance(value, str):
                raise ProtocolError(400, "parameter 'config' must be config.json as a string")
            config = value
        elif key.startswith("file:"):
            if not isinstance(value, str):
                raise ProtocolError(400, f"parameter {key!r} must be base64 text")
            try:
                files[key] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(400, f"parameter {key!r} is not valid base64") from None
        else:
            raise ProtocolError(
                400, f"unknown load parameter {key!r}; expected 'config' or 'file:<version>/<name>'"
            )
    return load_parameters(config, files)
