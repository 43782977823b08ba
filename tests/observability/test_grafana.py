"""The Grafana dashboard and provisioning files are well-formed and cover what operators need.

That every query evaluates and returns data is proven against a real Prometheus in
test_prometheus_stack.py; this checks the Grafana side of the files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.observability.prometheus import DASHBOARD, dashboard_panels

GRAFANA = DASHBOARD.parents[1]
ALERTS = DASHBOARD.parents[2] / "prometheus" / "alerts.yml"


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_identity_and_variables() -> None:
    board = _dashboard()
    assert board["uid"] == "tapeserve" and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "instance", "model"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "model"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def test_every_panel_queries_the_selected_prometheus() -> None:
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == panel["datasource"]


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_covers_every_required_view() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard_panels()}

    def panel_with(*needles: str) -> str:
        matches = [t for t, e in exprs.items() if all(n in e for n in needles)]
        assert matches, f"no panel queries {needles}"
        return matches[0]

    panel_with("tapeserve_requests_total", "by (model, code)")
    latency = panel_with("tapeserve_request_duration_seconds_bucket")
    assert all(f"histogram_quantile({q}," in exprs[latency] for q in (0.5, 0.95, 0.99))
    panel_with("tapeserve_queue_duration_seconds", "tapeserve_compute_duration_seconds")
    batch = panel_with("tapeserve_batch_size_bucket")
    assert next(p for p in dashboard_panels() if p["title"] == batch)["type"] == "heatmap"
    panel_with("tapeserve_queue_depth")
    panel_with("tapeserve_inflight_requests")
    panel_with("tapeserve_model_ready")
    panel_with("tapeserve_rejected_requests_total")
    panel_with("tapeserve_model_load_failures_total")
    panel_with("tapeserve_model_load_duration_seconds_sum")
    panel_with("tapeserve_gpu_utilization_ratio")
    panel_with("tapeserve_gpu_memory_used_bytes", "tapeserve_gpu_memory_total_bytes")


def test_the_error_panels_count_what_the_error_alert_counts() -> None:
    """A failing ensemble step or BLS call (protocol="inprocess") fails its outer request too:
    the 5xx alert and the error panels count the requests clients sent, each error once."""
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {r.get("alert"): r for g in rules["groups"] for r in g["rules"]}
    alert = alerts["TapeserveHighErrorRatio"]
    selector = re.compile(r"tapeserve_requests_total\{([^}]*)\}")
    counted = selector.findall(alert["expr"])
    assert counted and all('protocol!="inprocess"' in s for s in counted), alert["expr"]
    error_panels = 0
    for panel in dashboard_panels():
        expr = " ".join(t["expr"] for t in panel["targets"])
        if 'code=~"5..' in expr or 'code=~"[45]..' in expr:
            error_panels += 1
            for found in selector.findall(expr):
                assert 'protocol!="inprocess"' in found, (panel["title"], found)
    assert error_panels == 2


def test_provisioning_files() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    dashboards = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "tapeserve.yml").read_text()
    )
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).is_absolute()
