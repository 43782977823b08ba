"""Open Inference Protocol (KServe V2) endpoints, plus Triton's config and repository index."""

from __future__ import annotations

import functools
import importlib.metadata

from flask import Blueprint, Response, request

from serve.api.common import (
    deadline_for,
    encoded,
    failure,
    json_response,
    observed,
    read_body,
    resolve,
    run_model,
    server,
)
from serve.models import ModelVersion, State
from serve.protocol import v2
from serve.protocol.validate import validate_request
from serve.worker import draining

bp = Blueprint("v2", __name__)

SERVER_NAME = "tapeserve"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository", "parameters"]


@bp.get("/v2/health/live")
def live() -> Response:
    """Liveness: the process answers; never depends on models."""
    return json_response({"live": True})


@bp.get("/v2/health/ready")
def ready() -> Response:
    """Readiness: every model reached a final state (and none failed, with --strict-readiness);
    false from the moment the worker received SIGTERM (it drains, then exits)."""
    state = server()
    ok = not draining() and state.registry.ready(strict=state.settings.strict_readiness)
    return json_response({"ready": ok}, 200 if ok else 503)


@bp.get("/v2")
def metadata() -> Response:
    return json_response(v2.server_metadata(SERVER_NAME, server_version(), EXTENSIONS))


@functools.cache
def server_version() -> str:
    """The installed tapeserve version ("0" when running from a bare, uninstalled checkout)."""
    try:
        return importlib.metadata.version("tapeserve")
    except importlib.metadata.PackageNotFoundError:
        return "0"


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    try:
        mv = server().registry.version(name, version)
    except Exception as exc:
        return failure(exc)
    model = server().registry.model(name)
    ready_versions = [str(v) for v, m in model.versions.items() if m.state is State.READY]
    return json_response(
        v2.model_metadata(name, ready_versions, v2.PLATFORM, mv.inputs, mv.outputs)
    )


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    try:
        server().registry.version(name, version)
    except Exception as exc:
        response = failure(exc)
        if response.status_code == 503:
            return json_response(v2.model_ready(name, False), 503)
        return response
    return json_response(v2.model_ready(name, True))


@bp.get("/v2/models/<name>/config")
@bp.get("/v2/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None) -> Response:
    """The effective configuration, Triton-shaped, with the provider and state of each version."""
    registry = server().registry
    try:
        model = registry.model(name)
        if version is not None:
            registry.version(name, version)
    except Exception as exc:
        return failure(exc)
    config = model.config
    loaded = [m for m in model.versions.values() if m.state is State.READY]
    mv = loaded[-1] if loaded else None
    doc = {
        "name": name,
        "platform": v2.PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": mv.max_batch_size if mv else config.max_batch_size,
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(config.max_queue_delay_ms * 1000),
            "default_queue_policy": {
                "max_queue_size": config.max_queue_size,
                "default_timeout_microseconds": int(config.default_timeout_ms * 1000),
            },
        }
        if (mv is None or mv.batching) and config.max_batch_size > 0
        else None,
        "input": [v2.tensor_metadata(s) for s in mv.inputs] if mv else [],
        "output": [v2.tensor_metadata(s) for s in mv.outputs] if mv else [],
        "instance_group": [
            {
                "count": config.instance_count,
                "kind": "KIND_GPU" if mv and mv.device.startswith("cuda") else "KIND_CPU",
            }
        ],
        "version_policy": config.version_policy,
        "provider": mv.provider if mv else None,
        "device": mv.device if mv else (config.device or server().settings.device),
        "state": model.state.value,
        "reason": model.reason,
        "versions": [_version_status(m) for m in model.versions.values()],
        "config": config.to_json(),
    }
    return json_response(doc)


def _version_status(mv: ModelVersion) -> dict:
    return {
        "version": str(mv.version),
        "state": mv.state.value,
        "reason": mv.reason,
        "provider": mv.provider,
        "device": mv.device,
        "batching": mv.batching,
    }


@bp.post("/v2/repository/index")
def repository_index() -> Response:
    """Every model version with its state (and reason when unavailable)."""
    rows = []
    for model in server().registry.models.values():
        if model.error or not model.versions:
            rows.append({"name": model.name, "state": model.state.value, "reason": model.reason})
        for mv in model.versions.values():
            rows.append(
                {
                    "name": model.name,
                    "version": str(mv.version),
                    "state": mv.state.value,
                    "reason": mv.reason,
                }
            )
    return json_response(rows)


def _infer(ctx: dict, name: str, version: str | None = None) -> Response:
    mv = resolve(ctx, name, version)
    body = read_body()
    raw_spec = mv.inputs[0] if len(mv.inputs) == 1 else None
    req = v2.decode_infer(body, request.headers.get(v2.HEADER_LENGTH), raw_input=raw_spec)
    validate_request(req, mv.inputs, mv.outputs, mv.max_batch_size)
    deadline = deadline_for(mv, req.parameters.get("timeout"))
    results = run_model(mv, {i.name: i.data for i in req.inputs}, deadline)
    if req.outputs is None:
        chosen = [
            (s.name, arr, req.binary_output) for s, arr in zip(mv.outputs, results, strict=True)
        ]
    else:
        index = {s.name: i for i, s in enumerate(mv.outputs)}
        chosen = [(o.name, results[index[o.name]], o.binary) for o in req.outputs]
    body, headers = v2.encode_infer(mv.name, str(mv.version), req.id, chosen)
    return encoded(body, headers)


bp.add_url_rule("/v2/models/<name>/infer", "infer", observed("v2", _infer), methods=["POST"])
bp.add_url_rule(
    "/v2/models/<name>/versions/<version>/infer",
    "infer_version",
    observed("v2", _infer),
    methods=["POST"],
)
