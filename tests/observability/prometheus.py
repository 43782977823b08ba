"""Run the real Prometheus binary on a free loopback port against the shipped configuration.

The scrape config and alert rules are the files in deploy/prometheus, changed only where a test
must: the target (the test server's port), the intervals (1 s instead of 15 s) and the rule file
path (absolute). Also: the dashboard's and the rules' PromQL, with Grafana variables expanded.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tapeserve.json"
JOB = "tapeserve"

#: What Grafana would put in for the dashboard's variables ("All" for the selectors).
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1s",
    "$__range": "1h",
    "$job": ".*",
    "$instance": ".*",
    "$model": ".*",
}

#: An alert expression ends in "<comparison> <threshold>" (a convention of alerts.yml).
_THRESHOLD = re.compile(
    r"^(?P<signal>.*\S)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<value>[-+0-9.e]+)\s*$", re.S
)


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    log_path: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises AssertionError with Prometheus's error for a failing query."""
        response = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{expr!r}: {body.get('error', body)}"
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        (sample,) = self.query(expr)
        return float(sample["value"][1])

    def api(self, path: str) -> Any:
        body = requests.get(self.url + path, timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def wait_for_scrape_after(self, moment: float, timeout: float = 30.0) -> None:
        """Wait until the newest scrape of the job started after `moment` (time.time())."""
        deadline = time.monotonic() + timeout
        expr = f'min(timestamp(up{{job="{JOB}"}}))'
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result and float(result[0]["value"][1]) > moment:
                return
            time.sleep(0.2)
        raise TimeoutError(f"no scrape after {moment} within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def write_config(directory: Path, target: str) -> Path:
    """The shipped prometheus.yml aimed at `target`, scraping and evaluating every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = (j for j in config["scrape_configs"] if j["job_name"] == JOB)
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [target]}]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def run_prometheus(binary: str, directory: Path, target: str) -> Iterator[Prometheus]:
    """Start Prometheus scraping `target`; wait until it is ready and the target is up."""
    port = free_port()
    log_path = directory / "prometheus.log"
    argv = [
        binary,
        f"--config.file={write_config(directory, target)}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    prom = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, f"prometheus exited:\n{prom.log()}"
            with contextlib.suppress(requests.RequestException, AssertionError):
                if prom.query(f'up{{job="{JOB}"}} == 1'):
                    break
            time.sleep(0.2)
        else:
            raise TimeoutError(f"prometheus never scraped {target}:\n{prom.log()}")
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        shutil.rmtree(directory / "data", ignore_errors=True)


def expand(expr: str) -> str:
    """A dashboard expression as Grafana sends it, every variable set to its "All" value."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unexpanded Grafana variable in {expr!r}"
    return expr


def dashboard_panels() -> list[dict[str, Any]]:
    """Every non-row panel of the dashboard (rows' nested panels included)."""
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression as Grafana sends it) for every query of the dashboard."""
    return [(p["title"], expand(t["expr"])) for p in dashboard_panels() for t in p["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def alert_signal(expr: str) -> str:
    """The alert's comparison made a `bool` one: 0/1 for every series of the signal, so a
    non-empty answer shows the signal exists for the traffic whether or not the alert fires."""
    match = _THRESHOLD.match(expr.strip())
    assert match, f"alert expression does not end in '<comparison> <threshold>': {expr!r}"
    return f"{match['signal']} {match['op']} bool {match['value']}"
