"""Open Inference Protocol (KServe V2) endpoints, plus Triton's config and repository index."""

from __future__ import annotations

from flask import Blueprint, Response

from serve.core import describe
from serve.http.views.common import core, error_response, failure, json_response, read_body
from serve.protocol import jsondata, v2
from serve.protocol.types import ProtocolError

bp = Blueprint("v2", __name__)


@bp.get("/v2/health/live")
def live() -> Response:
    """Liveness: the process answers; never depends on models."""
    return json_response({"live": True})


@bp.get("/v2/health/ready")
def ready() -> Response:
    """Readiness: every model reached a final state (and none failed, with --strict-readiness);
    false from the moment the worker received SIGTERM (it drains, then exits)."""
    ok = core().ready()
    return json_response({"ready": ok}, 200 if ok else 503)


@bp.get("/v2")
def metadata() -> Response:
    return json_response(describe.server_metadata())


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    try:
        return json_response(describe.model_metadata(core(), name, version))
    except Exception as exc:
        return failure(exc)


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    try:
        ok = describe.model_ready(core(), name, version)
    except Exception as exc:
        return failure(exc)
    return json_response(v2.model_ready(name, ok), 200 if ok else 503)


@bp.get("/v2/models/<name>/config")
@bp.get("/v2/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None) -> Response:
    """The effective configuration, Triton-shaped, with the provider and state of each version."""
    try:
        return json_response(describe.model_config(core(), name, version))
    except Exception as exc:
        return failure(exc)


@bp.get("/v2/models/stats")
@bp.get("/v2/models/<name>/stats")
@bp.get("/v2/models/<name>/versions/<version>/stats")
def model_stats(name: str | None = None, version: str | None = None) -> Response:
    """Triton's statistics extension, read from the Prometheus counters of every worker."""
    try:
        return json_response({"model_stats": describe.model_stats(core(), name, version)})
    except Exception as exc:
        return failure(exc)


@bp.post("/v2/repository/index")
def repository_index() -> Response:
    """Every model version with its state (and reason when unavailable).

    A body `{"ready": true}` lists only the READY versions, as Triton's index does.
    """
    try:
        body = read_body()
        options = jsondata.loads(body) if body.strip() else {}
    except ProtocolError as exc:
        return failure(exc)
    if not isinstance(options, dict) or not isinstance(options.get("ready", False), bool):
        return error_response(400, 'repository index body must be {} or {"ready": true|false}')
    return json_response(describe.repository_index(core(), bool(options.get("ready"))))
