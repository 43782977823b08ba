"""Readiness series follow the repository: versions that are gone leave /metrics.

prometheus_client cannot remove a labelled gauge value in multiprocess mode, so without the
render-time filter a retired version would read "ready" and a deleted broken version "not
ready" forever, a false TapeserveModelNotReady alert.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.builders import identity, write_model

pytestmark = pytest.mark.slow


def _ready(server) -> dict[str, float]:
    return {
        s.labels["version"]: s.value
        for family in text_string_to_metric_families(server.metrics())
        for s in family.samples
        if s.name == "tapeserve_model_ready" and s.labels["model"] == "ident"
    }


def _wait_for(server, expected: dict[str, float], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := _ready(server)) != expected:
        assert time.monotonic() < deadline, (
            f"readiness {seen}, expected {expected}; server log:\n{server.log()[-6000:]}"
        )
        time.sleep(0.1)


def _wait_for_log(server, line: str, times: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := server.log().count(line)) < times:
        assert time.monotonic() < deadline, f"{line!r} logged {seen} times, expected {times}"
        time.sleep(0.1)


def test_retired_unloaded_and_deleted_versions_leave_the_metrics(
    tmp_path: Path, tapeserve_server
) -> None:
    write_model(tmp_path, "ident", identity(), version=1)
    server = tapeserve_server(
        tmp_path, workers=2, extra_args=["--model-control-mode", "poll", "--poll-interval", "0.2"]
    )
    _wait_for(server, {"1": 1.0})
    write_model(tmp_path, "ident", identity(), version=2)  # policy latest 1: v1 is retired
    _wait_for(server, {"2": 1.0})
    write_model(tmp_path, "ident", b"not a model", version=3)  # fails; v2 keeps serving
    _wait_for(server, {"2": 1.0, "3": 0.0})
    shutil.rmtree(tmp_path / "ident" / "3")
    _wait_for(server, {"2": 1.0})
    shutil.rmtree(tmp_path / "ident")
    # Each worker drops the model at its own scan, and either may answer a scrape: once both
    # have, no scrape shows its series, whichever worker answers it.
    _wait_for_log(server, "model ident unloaded", times=2)
    assert _ready(server) == {}
    assert 'tapeserve_queue_depth{model="ident"' not in server.metrics()
