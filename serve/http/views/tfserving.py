"""TensorFlow Serving REST endpoints: model status, metadata and `:predict`.

Flask cannot route `<name>:predict` apart from `<name>`, so the `:verb` suffix is split here.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from serve.http.views.common import (
    deadline_for,
    error_response,
    failure,
    json_response,
    observed,
    read_body,
    resolve,
    run_model,
    server,
)
from serve.lifecycle.registry import ModelVersion
from serve.observability import accesslog
from serve.protocol import tfserving

bp = Blueprint("tfserving", __name__)


def _split_verb(segment: str) -> tuple[str, str | None]:
    name, sep, verb = segment.partition(":")
    return name, (verb if sep else None)


def _status(name: str, version: str | None) -> Response:
    registry = server().registry
    try:
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
        mv = server().registry.version(name, version)
    except Exception as exc:
        return failure(exc)
    return json_response(tfserving.model_metadata(mv.name, str(mv.version), mv.inputs, mv.outputs))


def _predict(ctx: dict, name: str, version: str | None = None) -> Response:
    mv = resolve(ctx, name, version)
    req, feeds, deadline = prepare_predict(mv, read_body())
    body, _ = answer_predict(mv, req, run_model(mv, feeds, deadline))
    return json_response_bytes(body)


def prepare_predict(
    mv: ModelVersion, body: bytes, header_length: str | None = None
) -> tuple[tfserving.PredictRequest, dict, float | None]:
    """Decode a `:predict` body for `mv`: the request, its feeds and its deadline (shared with
    the event-loop fast path, serve.http.fast_path; `header_length` is V2's and unused here)."""
    req = tfserving.decode_predict(body, mv.inputs, max_batch_size=mv.max_batch_size)
    return req, req.inputs, deadline_for(mv, None)


def answer_predict(
    mv: ModelVersion, req: tfserving.PredictRequest, results: list
) -> tuple[bytes, dict[str, str]]:
    """The `:predict` answer in the request's row or column format."""
    outputs = {spec.name: arr for spec, arr in zip(mv.outputs, results, strict=True)}
    return tfserving.encode_predict(outputs, req.row_format), {"Content-Type": "application/json"}


def json_response_bytes(body: bytes) -> Response:
    return Response(body, 200, mimetype="application/json")


_observed_predict = observed("tfserving", _predict)


def _dispatch(name: str, version: str | None, verb: str | None) -> Response:
    # the route carries "name:verb" in one segment: name the model in the access log
    accesslog.annotate(model=name, version=version)
    if verb is None:
        if request.method != "GET":
            return error_response(
                405, f"{request.method} is not allowed here; use GET", {"Allow": "GET"}
            )
        return _status(name, version)
    if verb == "predict":
        if request.method != "POST":
            return error_response(
                405, f"{request.method} is not allowed for :predict; use POST", {"Allow": "POST"}
            )
        return _observed_predict(name=name, version=version)
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
