"""Zero-downtime model updates: poll mode swaps versions under load without a failed request;
a broken version leaves the previous one serving and is reported; half-written files wait."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from serve.lifecycle.control import ControlSettings, ModelController, vet_model
from serve.lifecycle.registry import ModelRegistry, State
from tests.hardening import hostile
from tests.support.server import start_server

CLIENTS = 32
DURATION_S = 20.0  # at least; each step waits for what it expects (bounded), not for a clock
V1_ONLY_S = 4.0
AFTER_S = 3.0  # load kept on after version 3 was refused
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}]}


def _publish(repo: Path, name: str, version: int, data: bytes) -> None:
    """Publish like the exporter does: write a hidden folder, then rename it into place."""
    staging = repo / name / f".staging-{version}"
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(data)
    os.rename(staging, repo / name / str(version))


def _model_bytes(offset: float) -> bytes:
    return hostile.add_weight_model(np.full(4, offset)).SerializeToString()


def _wait(condition, what: str, timeout: float = 90.0) -> float:
    """Poll `condition` until true; return the monotonic time it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _latest_all(answers: list, lock: threading.Lock, version: str, count: int = 64) -> bool:
    """The last `count` answers (in completion order, from both workers) all came from `version`."""
    with lock:
        latest = answers[-count:]
    return len(latest) == count and all(v == version for _, v, _ in latest)


def _version_state(srv, version: str) -> str | None:
    for row in srv.post("/v2/repository/index").json():
        if row["name"] == "m" and row.get("version") == version:
            return row["state"]
    return None


@pytest.mark.slow
def test_versions_swap_under_load_without_a_failed_request(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _publish(repo, "m", 1, _model_bytes(1.0))
    (repo / "m" / "config.json").write_text('{"max_batch_size": 32}')
    srv = start_server(
        repo,
        workers=2,
        threads=8,
        extra_args=["--model-control-mode", "poll", "--poll-interval", "0.5", "--strict-readiness"],
        env={"TAPESERVE_ADMIN_TOKEN": "t0ken"},
    )
    stop = threading.Event()
    lock = threading.Lock()
    answers: list[tuple[float, str, list]] = []  # (start time, version, data)
    failures: list[str] = []
    start = time.monotonic()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            sent = time.monotonic() - start
            try:
                r = session.post(srv.url + "/v2/models/m/infer", json=BODY, timeout=30)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                doc = r.json()
                with lock:
                    answers.append((sent, doc["model_version"], doc["outputs"][0]["data"]))
            except Exception as exc:  # every failure is counted, none may happen
                with lock:
                    failures.append(f"{sent:.2f}s {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        time.sleep(V1_ONLY_S)
        _publish(repo, "m", 2, _model_bytes(2.0))
        switched = _wait(lambda: _latest_all(answers, lock, "2"), "version 2 to take over")
        _publish(repo, "m", 3, hostile.computed_shape_bomb().SerializeToString())  # 64 GiB
        _wait(lambda: _version_state(srv, "3") == "UNAVAILABLE", "version 3 to be refused")
        time.sleep(max(AFTER_S, DURATION_S - (time.monotonic() - start)))
        after_v3 = time.monotonic() - start - AFTER_S
        stop.set()
        elapsed = time.monotonic() - start
        for t in threads:
            t.join(60)
        index = srv.post("/v2/repository/index").json()
        metrics_text = srv.metrics()
        status_page = srv.get("/").text
        ready = srv.get("/v2/health/ready").status_code
        explicit_only = srv.post(
            "/v2/repository/models/m/load", headers={"Authorization": "Bearer t0ken"}
        )
    finally:
        stop.set()
        log = srv.log()
        srv.stop()

    sent = len(answers) + len(failures)
    by_version = {v: sum(1 for _, ver, _ in answers if ver == v) for v in ("1", "2", "3")}
    print(
        f"\nversion swap under load: {CLIENTS} clients, {elapsed:.1f} s: sent {sent}, "
        f"succeeded {len(answers)}, failed {len(failures)}; answered by version 1: "
        f"{by_version['1']}, version 2: {by_version['2']}, version 3: {by_version['3']}"
    )
    assert not failures, failures[:5]
    assert sent > CLIENTS * 10
    for _, version, data in answers:  # each answer is the one its version computes
        assert data == [float(version)] * 4
    assert by_version["1"] > 0 and by_version["2"] > 0 and by_version["3"] == 0
    assert not [t for t, v, _ in answers if v == "1" and t > switched - start], (
        "version 1 answered a request sent after version 2 took over"
    )
    assert all(v == "2" for t, v, _ in answers if t > after_v3), "version 2 stopped serving"

    rows = {row.get("version"): row for row in index if row["name"] == "m"}
    assert rows["2"]["state"] == "READY"
    assert rows["3"]["state"] == "UNAVAILABLE" and "ran out of memory" in rows["3"]["reason"]
    assert "1" not in rows  # retired
    failures_metric = re.search(
        r'^tapeserve_model_load_failures_total\{model="m"\} (\S+)$', metrics_text, re.M
    )
    assert failures_metric and float(failures_metric.group(1)) >= 1, metrics_text
    assert "UNAVAILABLE" in status_page and "ran out of memory" in status_page
    assert "now serves version(s) [2]" in log
    assert ready == 200, "a failed update must not take a serving replica out of rotation"
    assert explicit_only.status_code == 400
    assert "needs --model-control-mode explicit" in explicit_only.json()["error"]


def test_half_written_version_waits_until_its_files_stop_changing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _publish(repo, "m", 1, _model_bytes(1.0))
    settings = ControlSettings(mode="poll", poll_interval=60, retire_timeout_s=0.0)
    registry = ModelRegistry(repo, "cpu", 1)
    registry.vet = lambda path: vet_model(path, settings)
    controller = ModelController(registry, settings)
    registry.start()
    assert registry.wait_loaded(60)

    data = _model_bytes(2.0)
    target = repo / "m" / "2" / "model.onnx"
    target.parent.mkdir()
    third = len(data) // 3
    for end in (third, 2 * third, len(data)):  # the copy progresses between scans
        with open(target, "ab") as out:
            out.write(data[len(target.read_bytes()) if target.exists() else 0 : end])
        controller.poll_once()
        model = registry.models["m"]
        assert list(model.versions) == [1], "a version was loaded while still being written"
        assert model.versions[1].state is State.READY
    controller.poll_once()  # unchanged since the previous scan: complete
    model = registry.models["m"]
    assert list(model.versions) == [2] and model.versions[2].state is State.READY
    assert registry.version("m").version == 2


def test_broken_version_leaves_the_previous_one_serving(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _publish(repo, "m", 1, _model_bytes(1.0))
    settings = ControlSettings(mode="poll", poll_interval=60)
    registry = ModelRegistry(repo, "cpu", 1)
    registry.vet = lambda path: vet_model(path, settings)
    controller = ModelController(registry, settings)
    registry.start()
    assert registry.wait_loaded(60)
    evil = hostile.point_external(hostile.add_weight_model(), "/etc/passwd")
    _publish(repo, "m", 2, evil.SerializeToString())
    controller.poll_once()
    controller.poll_once()
    model = registry.models["m"]
    assert model.state is State.READY and registry.version("m").version == 1
    assert model.versions[2].state is State.UNAVAILABLE
    assert "absolute path" in model.versions[2].reason
    controller.poll_once()  # an unchanged failed version is not retried on every scan
    assert registry.models["m"] is model

    fixed = repo / "m" / "2" / "fixed.tmp"
    fixed.write_bytes(_model_bytes(2.0))
    os.replace(fixed, repo / "m" / "2" / "model.onnx")  # changed files: retried once settled
    controller.poll_once()
    controller.poll_once()
    assert registry.version("m").version == 2 and list(registry.models["m"].versions) == [2]


def _controller(repo: Path) -> tuple[ModelRegistry, ModelController]:
    settings = ControlSettings(mode="poll", poll_interval=60, retire_timeout_s=0.0)
    registry = ModelRegistry(repo, "cpu", 1)
    registry.vet = lambda path: vet_model(path, settings)
    registry.start()
    assert registry.wait_loaded(60)
    return registry, ModelController(registry, settings)


def test_config_change_reloads_and_removed_model_unloads(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _publish(repo, "m", 1, _model_bytes(1.0))
    _publish(repo, "other", 1, _model_bytes(5.0))
    registry, controller = _controller(repo)
    before = registry.version("m")
    controller.poll_once()
    assert registry.version("m") is before  # nothing changed: nothing reloaded

    (repo / "m" / "config.json").write_text('{"max_batch_size": 4}')
    controller.poll_once()  # first sighting of the new config
    controller.poll_once()  # unchanged since: applied
    after = registry.version("m")
    assert after is not before and after.config.max_batch_size == 4
    assert after.state is State.READY and before.batcher._closed

    (repo / "new").mkdir()
    _publish(repo, "new", 1, _model_bytes(7.0))
    (repo / "other" / "1" / "model.onnx").unlink()
    (repo / "other" / "1").rmdir()
    (repo / "other").rmdir()
    controller.poll_once()
    controller.poll_once()
    assert "other" not in registry.models
    assert registry.version("new").state is State.READY
