"""tapeserve with several Gunicorn workers, scraped by a real Prometheus with the shipped config.

A known number of requests (some failing on purpose) goes in; Prometheus's HTTP API must then
count exactly that, and every dashboard query and alert expression must evaluate and return data.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.observability import prometheus as prom
from tests.serve.builders import identity, write_model
from tests.support.server import RunningServer, start_server
from tests.support.system import require_tool

pytestmark = [pytest.mark.system, pytest.mark.slow]

WORKERS = 3
V2_BODY = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]
}
BAD_BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2]}]}

#: (path, JSON body, expected status, how many, counted as (model, protocol, code), rows run).
TRAFFIC = [
    ("/v2/models/ident/infer", V2_BODY, 200, 24, ("ident", "v2", "200"), 2),
    (
        "/v1/models/ident:predict",
        {"instances": [[1, 2, 3]]},
        200,
        10,
        ("ident", "tfserving", "200"),
        1,
    ),
    ("/v2/models/ident/infer", BAD_BODY, 400, 5, ("ident", "v2", "400"), None),
    ("/v2/models/missing/infer", V2_BODY, 404, 3, ("", "v2", "404"), None),
    ("/v2/models/broken/infer", V2_BODY, 503, 2, ("broken", "v2", "503"), None),
]
SAMPLES = 24 * 2 + 10 * 1  # rows executed by the model: the 200s only


class Stack:
    def __init__(self, server: RunningServer, prometheus: prom.Prometheus) -> None:
        self.server, self.prometheus = server, prometheus
        self.sent: Counter[tuple[str, str, str]] = Counter()
        #: X-Request-ID -> (path, status, rows) of every request sent
        self.requests: dict[str, tuple[str, int, int | None]] = {}


def _send(stack: Stack, half: int) -> None:
    """Send half 0 or 1 of TRAFFIC over fresh connections (spread over the workers), in parallel."""
    jobs = []
    for path, body, status, count, key, rows in TRAFFIC:
        n = count // 2 if half == 0 else count - count // 2
        jobs += [(path, body, status, key, rows)] * n

    def one(numbered):
        i, (path, body, status, key, rows) = numbered
        rid = f"stack-{half}-{i}"
        response = requests.post(
            stack.server.url + path, json=body, headers={"X-Request-ID": rid}, timeout=30
        )
        assert response.status_code == status, (path, response.status_code, response.text)
        assert response.headers["X-Request-ID"] == rid
        stack.requests[rid] = (path, status, rows)
        return key

    with ThreadPoolExecutor(4) as pool:
        stack.sent.update(pool.map(one, enumerate(jobs)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    binary = require_tool("prometheus")
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "ident", identity())
    write_model(repo, "broken", b"this is not an ONNX model")
    server = start_server(repo, workers=WORKERS, wait="none")  # Prometheus starts meanwhile
    try:
        target = f"127.0.0.1:{server.port}"
        with prom.run_prometheus(binary, tmp_path_factory.mktemp("prometheus"), target) as p:
            _wait_until_every_worker_loaded(server)
            s = Stack(server, p)
            # Two halves with a scrape between them, so rates see the counters move.
            _send(s, 0)
            p.wait_for_scrape_after(time.time())
            _send(s, 1)
            p.wait_for_scrape_after(time.time())
            yield s
    finally:
        server.stop()


def _wait_until_every_worker_loaded(server: RunningServer, timeout: float = 60.0) -> None:
    """Every worker, not just the one a readiness probe reached, has settled both models."""
    deadline = time.monotonic() + timeout
    while True:
        log = server.log()
        ready = {
            line.split("] [")[1] for line in log.splitlines() if "ident version 1 ready" in line
        }
        failed = {
            line.split("] [")[1] for line in log.splitlines() if "broken version 1 fail" in line
        }
        if len(ready) == len(failed) == WORKERS:
            return
        assert server.process.poll() is None, f"server exited:\n{log[-4000:]}"
        assert time.monotonic() < deadline, f"workers did not load the models:\n{log[-4000:]}"
        time.sleep(0.1)


def test_request_counters_sum_exactly_to_what_was_sent(stack: Stack) -> None:
    p = stack.prometheus
    assert stack.sent == Counter({key: n for _, _, _, n, key, _ in TRAFFIC})
    counted = {
        (r["metric"].get("model", ""), r["metric"]["protocol"], r["metric"]["code"]): float(
            r["value"][1]
        )
        for r in p.query(
            'sum by (model, protocol, code) (tapeserve_requests_total{job="tapeserve"})'
        )
    }
    assert counted == {key: float(n) for key, n in stack.sent.items()}
    assert p.value('sum(tapeserve_inference_samples_total{job="tapeserve"})') == SAMPLES
    # Durations are observed for requests that resolved a model version: those to "ident".
    with_model = sum(n for (model, _, _), n in stack.sent.items() if model == "ident")
    assert p.value('sum(tapeserve_request_duration_seconds_count{job="tapeserve"})') == with_model
    assert p.value('sum(tapeserve_request_duration_seconds_bucket{le="+Inf"})') == with_model


def _access_log(stack: Stack) -> list[dict]:
    return [json.loads(line) for line in stack.server.log().splitlines() if line.startswith("{")]


def test_access_log_has_one_line_per_request_with_its_fields(stack: Stack) -> None:
    inference = [e for e in _access_log(stack) if e["request_id"].startswith("stack-")]
    assert sorted(e["request_id"] for e in inference) == sorted(stack.requests)
    for entry in inference:
        path, status, rows = stack.requests[entry["request_id"]]
        model = path.split("/")[3].split(":")[0]
        assert (entry["method"], entry["path"], entry["status"]) == ("POST", path, status)
        assert (entry["model"], entry["batch_size"]) == (model, rows), entry
        assert entry["version"] == ("1" if status in (200, 400) else None), entry
        assert entry["latency_ms"] > 0 and entry["time"].endswith("Z")


def test_requests_were_served_by_several_workers(stack: Stack) -> None:
    """Otherwise the exact counts above would not prove the multiprocess merge."""
    inference = [e for e in _access_log(stack) if e["request_id"].startswith("stack-")]
    assert len({e["pid"] for e in inference}) >= 2


@pytest.mark.parametrize("title,expr", prom.dashboard_queries())
def test_every_dashboard_query_evaluates_and_returns_data(
    stack: Stack, title: str, expr: str
) -> None:
    result = stack.prometheus.query(expr)
    if "GPU" in title and not _server_has_gpu(stack):
        assert result == [], f"{title}: GPU series must be absent without a GPU, got {result}"
        return
    assert result, f"panel {title!r} has no data for this traffic: {expr}"


@pytest.mark.parametrize("rule", prom.alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_expression_evaluates_and_its_signal_returns_data(stack: Stack, rule) -> None:
    stack.prometheus.query(rule["expr"])  # no error
    assert stack.prometheus.query(prom.alert_signal(rule["expr"])), rule["expr"]


def test_prometheus_evaluates_every_rule_without_error(stack: Stack) -> None:
    groups = stack.prometheus.api("/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(prom.alert_rules())
    for rule in rules:
        assert rule["health"] in ("ok", "unknown"), (rule["name"], rule.get("lastError"))
    deadline = time.monotonic() + 30
    while any(rule["health"] != "ok" for rule in rules) and time.monotonic() < deadline:
        time.sleep(0.5)
        groups = stack.prometheus.api("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
    assert all(rule["health"] == "ok" for rule in rules), rules


def test_only_the_broken_model_raises_alerts(stack: Stack) -> None:
    """Load failures fire at once; not-ready and the 5xx ratio are pending (their `for` is
    minutes); nothing else is raised. Rules run every second, so wait for them to settle."""
    # 503s are counted under the model label the server gave them (empty labels are dropped).
    models_with_5xx = {model or None for (model, _, code) in stack.sent if code.startswith("5")}
    expected = {
        ("TapeserveModelLoadFailures", "broken", "firing"),
        ("TapeserveModelNotReady", "broken", "pending"),
    } | {("TapeserveHighErrorRatio", model, "pending") for model in models_with_5xx}
    deadline = time.monotonic() + 30
    while True:
        alerts = stack.prometheus.api("/api/v1/alerts")["alerts"]
        states = {(a["labels"]["alertname"], a["labels"].get("model"), a["state"]) for a in alerts}
        if states == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert states == expected


def test_model_readiness_is_reported_per_model(stack: Stack) -> None:
    ready = {
        r["metric"]["model"]: float(r["value"][1])
        for r in stack.prometheus.query('min by (model) (tapeserve_model_ready{job="tapeserve"})')
    }
    assert ready == {"ident": 1.0, "broken": 0.0}
    failures = {
        r["metric"]["model"]: float(r["value"][1])
        for r in stack.prometheus.query("tapeserve_model_load_failures_total")
    }
    assert failures == {"ident": 0.0, "broken": float(WORKERS)}  # one failed attempt per worker


def _server_has_gpu(stack: Stack) -> bool:
    return "tapeserve_gpu_" in stack.server.metrics()


def test_dashboard_error_panels_read_zero_not_no_data(stack: Stack) -> None:
    """Panels of errors, rejections and load failures fall back to 0 when nothing failed."""
    titles = [p["title"] for p in prom.dashboard_panels()]
    guarded = [t for t in titles if any(w in t.lower() for w in ("error", "reject", "failure"))]
    assert len(guarded) >= 4, titles
    for panel in prom.dashboard_panels():
        if panel["title"] in guarded:
            for target in panel["targets"]:
                assert "or on() " in target["expr"] and "vector(0)" in target["expr"], panel[
                    "title"
                ]
    # The only rejections of this traffic are the requests to the unavailable model; for a
    # model without any, the rejection panel has a 0 series.
    ((title, expr),) = [(t, e) for t, e in prom.dashboard_queries() if "Rejected" in t]
    rejected = {(r["metric"]["model"], r["metric"]["reason"]) for r in stack.prometheus.query(expr)}
    assert rejected == {("broken", "unavailable")}
    ident = expr.replace('model=~".*"', 'model=~"ident"')
    assert [float(r["value"][1]) for r in stack.prometheus.query(ident)] == [0.0]
