"""Open Inference Protocol (KServe V2) endpoints, plus Triton's config and repository index."""

from __future__ import annotations

import functools
import importlib.metadata

from flask import Blueprint, Response

from serve.http.views.common import (
    core,
    error_response,
    failure,
    json_response,
    read_body,
)
from serve.lifecycle.registry import ModelVersion, State
from serve.observability import metrics
from serve.protocol import jsondata, v2
from serve.protocol.types import ProtocolError

bp = Blueprint("v2", __name__)

SERVER_NAME = "tapeserve"
EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "parameters",
]


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
        mv = core().version(name, version)
    except Exception as exc:
        return failure(exc)
    model = core().registry.model(name)
    ready_versions = [str(v) for v, m in model.versions.items() if m.state is State.READY]
    return json_response(
        v2.model_metadata(name, ready_versions, mv.config.platform_name, mv.inputs, mv.outputs)
    )


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    try:
        core().version(name, version)
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
    registry = core().registry
    try:
        core().check_name(name)
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
        "platform": config.platform_name,
        "backend": config.backend_name,
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
        "output": [_output_config(mv, s) for s in mv.outputs] if mv else [],
        "instance_group": [
            {
                "count": config.instance_count,
                "kind": "KIND_GPU" if mv and mv.device.startswith("cuda") else "KIND_CPU",
            }
        ],
        "version_policy": config.version_policy,
        "provider": mv.provider if mv else None,
        "device": mv.device if mv else (config.device or core().settings.device),
        "state": model.state.value,
        "reason": model.reason,
        "versions": [_version_status(m) for m in model.versions.values()],
        "config": config.to_json(),
    }
    return json_response(doc)


def _output_config(mv: ModelVersion, spec) -> dict:
    """An output's metadata, with the class labels of its columns when the model has them
    (label files, or a ZipMap's classes: serve.lifecycle.signature)."""
    doc = v2.tensor_metadata(spec)
    if spec.name in mv.labels:
        doc["labels"] = mv.labels[spec.name]
    return doc


def _version_status(mv: ModelVersion) -> dict:
    return {
        "version": str(mv.version),
        "state": mv.state.value,
        "reason": mv.reason,
        "provider": mv.provider,
        "device": mv.device,
        "batching": mv.batching,
        "metadata": mv.metadata,
    }


_STAT_FAMILIES = (
    "tapeserve_requests",
    "tapeserve_request_duration_seconds",
    "tapeserve_queue_duration_seconds",
    "tapeserve_compute_duration_seconds",
    "tapeserve_inference_samples",
    "tapeserve_inference_batches",
)


@bp.get("/v2/models/stats")
@bp.get("/v2/models/<name>/stats")
@bp.get("/v2/models/<name>/versions/<version>/stats")
def model_stats(name: str | None = None, version: str | None = None) -> Response:
    """Triton's statistics extension, read from the Prometheus counters of every worker."""
    registry = core().registry
    try:
        if name is not None:
            core().check_name(name)
        models = [registry.model(name)] if name is not None else list(registry.models.values())
        if version is not None:
            registry.version(name, version)  # type: ignore[arg-type]
    except Exception as exc:
        return failure(exc)
    wanted = {
        (m.name, str(v)) for m in models for v in m.versions if version is None or str(v) == version
    }
    totals: dict[tuple[str, str], dict[str, float]] = {key: {} for key in wanted}
    for sample in metrics.samples(_STAT_FAMILIES):
        key = (sample.labels.get("model"), sample.labels.get("version"))
        if key not in totals:
            continue
        field = sample.name
        if sample.name == "tapeserve_requests_total":
            field = "success" if sample.labels.get("code") == "200" else "fail"
        totals[key][field] = totals[key].get(field, 0.0) + sample.value

    def stat(t: dict, count: str, seconds: str | None = None) -> dict:
        return {"count": int(t.get(count, 0)), "ns": int(t.get(seconds, 0) * 1e9) if seconds else 0}

    rows = []
    for (model, ver), t in sorted(totals.items()):
        rows.append(
            {
                "name": model,
                "version": ver,
                "last_inference": 0,
                "inference_count": int(t.get("tapeserve_inference_samples_total", 0)),
                "execution_count": int(t.get("tapeserve_inference_batches_total", 0)),
                "inference_stats": {
                    "success": stat(t, "success", "tapeserve_request_duration_seconds_sum"),
                    "fail": stat(t, "fail"),
                    "queue": stat(
                        t,
                        "tapeserve_queue_duration_seconds_count",
                        "tapeserve_queue_duration_seconds_sum",
                    ),
                    "compute_input": stat(t, ""),
                    "compute_infer": stat(
                        t,
                        "tapeserve_compute_duration_seconds_count",
                        "tapeserve_compute_duration_seconds_sum",
                    ),
                    "compute_output": stat(t, ""),
                },
                "batch_stats": [],
            }
        )
    return json_response({"model_stats": rows})


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
    rows = []
    for model in core().registry.models.values():
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
    if options.get("ready"):
        rows = [row for row in rows if row["state"] == State.READY.value]
    return json_response(rows)
