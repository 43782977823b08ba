"""Operator endpoints: the HTML status page, Prometheus /metrics and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, render_template

from serve.core.describe import server_version
from serve.http.openapi import openapi_document
from serve.http.views.common import core, json_response
from serve.lifecycle.registry import State
from serve.observability import metrics

bp = Blueprint("status", __name__)


@bp.get("/")
def status_page() -> str:
    """Models, versions, state (with the reason when unavailable), device, and useful links."""
    state = core()
    registry = state.registry
    rows = []
    for model in registry.models.values():
        if model.error or not model.versions:
            rows.append((model.name, "-", State.UNAVAILABLE.value, model.reason, "-", "-", {}))
        for mv in model.versions.values():
            batching = f"up to {mv.config.max_batch_size}" if mv.batching else "off"
            if mv.state is State.LOADING:
                batching = "-"
            rows.append(
                (model.name, mv.version, mv.state.value, mv.reason, mv.device or "-",
                 f"{mv.provider or '-'}; batching {batching}", mv.metadata)
            )  # fmt: skip
    return render_template(
        "status.html",
        rows=rows,
        ready=state.ready(),
        repository=state.settings.model_repository,
        error=registry.error,
        device=state.settings.device,
    )


@bp.get("/metrics")
def prometheus_metrics() -> Response:
    models = core().registry.models.values()
    body, content_type = metrics.render({(m.name, str(v)) for m in models for v in m.versions})
    return Response(body, 200, {"Content-Type": content_type})


@bp.get("/openapi.json")
def openapi() -> Response:
    return json_response(openapi_document(server_version()))
