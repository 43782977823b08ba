"""TensorFlow Serving REST endpoints: model status and metadata, and the other `:verb`s.

`POST .../<name>:predict` is an inference route (serve/http/views/inference.py); every other
request on `/v1/models/<name>[:verb]` comes here, where the `:verb` suffix is split off.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from serve.http.views.common import core, error_response, failure, json_response
from serve.observability import accesslog
from serve.protocol import tfserving

bp = Blueprint("tfserving", __name__)


def _split_verb(segment: str) -> tuple[str, str | None]:
    name, sep, verb = segment.partition(":")
    return name, (verb if sep else None)


def _status(name: str, version: str | None) -> Response:
    registry = core().registry
    try:
        core().check_name(name)
        model = registry.model(name)
        if version is None:
            if model.error:
                return error_response(503, f"model {name!r} is unavailable: {model.error}")
            versions = list(model.versions.values())
        else:
            try:
                versions = [model.versions[int(version)]]
            except (ValueError, KeyError):
                registry.version(name, version)  # raises the 404 with its message
                raise
    except Exception as exc:
        return failure(exc)
    return json_response(
        tfserving.model_status([(v.version, v.state.value, v.reason) for v in versions])
    )


def _metadata(name: str, version: str | None) -> Response:
    try:
        mv = core().version(name, version)
    except Exception as exc:
        return failure(exc)
    return json_response(tfserving.model_metadata(mv.name, str(mv.version), mv.inputs, mv.outputs))


def _dispatch(name: str, version: str | None, verb: str | None) -> Response:
    # the route carries "name:verb" in one segment: name the model in the access log
    accesslog.annotate(model=name, version=version)
    if verb is None:
        if request.method != "GET":
            return error_response(
                405, f"{request.method} is not allowed here; use GET", {"Allow": "GET"}
            )
        return _status(name, version)
    if verb == "predict":  # a POST is routed to the inference view
        return error_response(
            405, f"{request.method} is not allowed for :predict; use POST", {"Allow": "POST"}
        )
    if verb in ("classify", "regress"):
        return error_response(501, f":{verb} is not implemented; use :predict")
    return error_response(404, f"unknown method ':{verb}'; tapeserve supports :predict")


@bp.route("/v1/models/<segment>", methods=["GET", "POST"])
def model(segment: str) -> Response:
    name, verb = _split_verb(segment)
    return _dispatch(name, None, verb)


@bp.route("/v1/models/<name>/versions/<segment>", methods=["GET", "POST"])
def model_version(name: str, segment: str) -> Response:
    version, verb = _split_verb(segment)
    return _dispatch(name, version, verb)


@bp.get("/v1/models/<name>/metadata")
def metadata(name: str) -> Response:
    return _metadata(name, None)


@bp.get("/v1/models/<name>/versions/<version>/metadata")
def version_metadata(name: str, version: str) -> Response:
    return _metadata(name, version)
