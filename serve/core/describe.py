"""What the server says about itself and its models, whatever the protocol: server metadata,
model metadata and readiness, the effective configuration, statistics, the repository index.

The REST views write these as JSON; the gRPC servicer copies them into Triton's messages.
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Any

from serve.core.inference import InferenceCore
from serve.lifecycle.registry import ModelNotReady, ModelVersion, State
from serve.observability import metrics
from serve.protocol import v2
from serve.protocol.types import TensorSpec

SERVER_NAME = "tapeserve"
EXTENSIONS = [
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "parameters",
    "statistics",
]


@functools.cache
def server_version() -> str:
    """The installed tapeserve version ("0" when running from a bare, uninstalled checkout)."""
    try:
        return importlib.metadata.version("tapeserve")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def server_metadata() -> dict[str, Any]:
    return v2.server_metadata(SERVER_NAME, server_version(), EXTENSIONS)


def model_metadata(core: InferenceCore, name: str, version: str | None) -> dict[str, Any]:
    """Name, READY versions, platform, inputs and outputs (raises the 400/404/503)."""
    mv = core.version(name, version)
    model = core.registry.model(name)
    ready = [str(v) for v, m in model.versions.items() if m.state is State.READY]
    return v2.model_metadata(name, ready, mv.config.platform_name, mv.inputs, mv.outputs)


def model_ready(core: InferenceCore, name: str, version: str | None) -> bool:
    """Whether the version can answer now; raises the 400/404 of an unknown model or version."""
    try:
        core.version(name, version)
    except ModelNotReady:
        return False
    return True


def model_config(core: InferenceCore, name: str, version: str | None) -> dict[str, Any]:
    """The effective configuration, Triton-shaped, with the provider and state of each version."""
    core.check_name(name)
    registry = core.registry
    model = registry.model(name)
    if version is not None:
        registry.version(name, version)
    config = model.config
    loaded = [m for m in model.versions.values() if m.state is State.READY]
    mv = loaded[-1] if loaded else None
    return {
        "name": name,
        "platform": config.platform_name,
        "backend": config.backend_name,
        "max_batch_size": mv.max_batch_size if mv else config.max_batch_size,
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(config.max_queue_delay_ms * 1000),
            "pad_variable_length_inputs": mv.padding is not None
            if mv
            else config.pad_variable_length_inputs,
            "padding_buckets": list(config.padding_buckets),
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
        "device": mv.device if mv else (config.device or core.settings.device),
        "state": model.state.value,
        "reason": model.reason,
        "versions": [_version_status(m) for m in model.versions.values()],
        "config": config.to_json(),
    }


def _output_config(mv: ModelVersion, spec: TensorSpec) -> dict[str, Any]:
    """An output's metadata, with the class labels of its columns when the model has them
    (label files, or a ZipMap's classes: serve.lifecycle.signature)."""
    doc = v2.tensor_metadata(spec)
    if spec.name in mv.labels:
        doc["labels"] = mv.labels[spec.name]
    return doc


def _version_status(mv: ModelVersion) -> dict[str, Any]:
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


def model_stats(
    core: InferenceCore, name: str | None = None, version: str | None = None
) -> list[dict[str, Any]]:
    """Triton's statistics extension, read from the Prometheus counters of every worker.

    Requests of every protocol count; `success` is those answered with status 200.
    """
    registry = core.registry
    if name:
        core.check_name(name)
    models = [registry.model(name)] if name else list(registry.models.values())
    if name and version:
        registry.version(name, version)
    wanted = {
        (m.name, str(v)) for m in models for v in m.versions if not version or str(v) == version
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
    return rows


def repository_index(core: InferenceCore, ready_only: bool = False) -> list[dict[str, Any]]:
    """Every model version with its state and reason; only the READY ones when `ready_only`,
    as Triton's index does. A model that failed as a whole is listed without a version."""
    rows: list[dict[str, Any]] = []
    for model in core.registry.models.values():
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
    if ready_only:
        rows = [row for row in rows if row["state"] == State.READY.value]
    return rows
