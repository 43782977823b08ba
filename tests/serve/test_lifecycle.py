"""Model states, warm-up, readiness and devices: one bad model never stops the others."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serve.lifecycle.load_probe import probe_model
from serve.lifecycle.runtime import gpu_device_visible
from serve.settings import BUNDLED_REPOSITORY
from tests.serve import builders


def index(server) -> dict:
    return {(r["name"], r.get("version")): r for r in server.post("/v2/repository/index").json()}


def test_broken_model_and_bad_config_are_unavailable_with_reason(server) -> None:
    rows = index(server)
    assert rows[("broken", "1")]["state"] == "UNAVAILABLE"
    assert rows[("broken", "1")]["reason"]
    assert "max_batch_size must be an integer" in rows[("badconfig", None)]["reason"]
    assert "warm-up sample 0 failed" in rows[("badsample", "1")]["reason"]
    assert rows[("goodsample", "1")]["state"] == "READY"  # its config samples ran
    config = server.get("/v2/models/goodsample/config").json()
    assert config["instance_group"] == [{"count": 2, "kind": "KIND_CPU"}]
    config = server.get("/v2/models/broken/config").json()
    assert config["state"] == "UNAVAILABLE" and config["reason"]
    # every other model keeps serving, and readiness is not held back without strict mode
    assert rows[("mlp", "1")]["state"] == "READY"
    assert server.get("/v2/health/ready").status_code == 200


def test_failed_synthesized_warmup_is_logged_and_model_serves(tapeserve_server, tmp_path) -> None:
    # the load probe runs the same zeros warm-up in its child and follows the same rule
    builders.write_model(tmp_path, "counter", builders.counter())
    srv = tapeserve_server(tmp_path)
    assert index(srv)[("counter", "1")]["state"] == "READY"
    assert "warm-up on synthesized zeros" in srv.log()  # the probe's warning
    assert "counter version 1: warm-up with synthesized zeros failed" in srv.log()
    body = {"inputs": [{"name": "delta", "shape": [], "datatype": "INT64", "data": [3]}]}
    response = srv.post("/v2/models/counter/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [0, 3, 6, 9]


def test_load_probe_accepts_a_failed_synthesized_warmup_but_not_a_failed_session(
    tmp_path,
) -> None:
    good = builders.write_model(tmp_path, "counter", builders.counter())
    result = probe_model(good)
    assert result.ok and result.reason is None
    assert "failed while running the warm-up on synthesized zeros" in result.warning
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not an onnx model")
    result = probe_model(bad)
    assert not result.ok and "creating the inference session" in result.reason


def test_cuda_model_never_silently_runs_on_cpu(server) -> None:
    row = index(server)[("on_cuda", "1")]
    if row["state"] == "READY":
        config = server.get("/v2/models/on_cuda/config").json()
        assert config["provider"] == "CUDAExecutionProvider"
        assert config["device"].startswith("cuda")
    else:
        assert row["state"] == "UNAVAILABLE"
        assert "cuda" in row["reason"].lower()


def test_strict_readiness_waits_for_every_model(tapeserve_server, small_repository) -> None:
    srv = tapeserve_server(small_repository, extra_args=["--strict-readiness"], wait="live")
    srv.wait_models_final()
    response = srv.get("/v2/health/ready")
    assert response.status_code == 503 and response.json() == {"ready": False}
    assert srv.post("/v2/models/mlp/infer", json={"inputs": [{"name": "x", "shape": [1, 16],
                    "datatype": "FP32", "data": [0] * 16}]}).status_code == 200  # fmt: skip


def test_bundled_repository_serves_and_is_strictly_ready(tapeserve_server) -> None:
    srv = tapeserve_server(BUNDLED_REPOSITORY, extra_args=["--strict-readiness"])
    assert srv.get("/v2/health/ready").json() == {"ready": True}
    log = srv.log()
    assert "Listening at: http://127.0.0.1:" in log
    assert "model example version 1 ready on cpu" in log or "ready on cuda" in log
    assert "running on CPU" in log or "ready on cuda" in log  # the device choice is logged
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    probabilities = srv.post("/v2/models/example/infer", json=body).json()["outputs"][0]["data"]
    assert abs(sum(probabilities) - 1) < 1e-5


def test_hand_started_gunicorn_reads_tapeserve_env(tapeserve_server, small_repository) -> None:
    """The documented plain `gunicorn -c python:serve.gunicorn_conf ...` serves the same way."""
    srv = tapeserve_server(
        small_repository,
        plain_gunicorn=True,
        workers=2,
        env={"TAPESERVE_STRICT_READINESS": "1"},
        wait="live",
    )
    srv.wait_models_final()
    assert srv.get("/v2/health/ready").status_code == 503  # strict: `broken` failed
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}]}
    assert srv.post("/v2/models/mlp/infer", json=body).status_code == 200
    assert "2 worker(s)" in srv.log()


def test_device_cuda_fails_loudly_without_a_gpu(tmp_path) -> None:
    if gpu_device_visible():
        pytest.skip("a GPU is visible here; test_cuda_model_never_silently_runs_on_cpu covers it")
    result = subprocess.run(
        [sys.executable, "-m", "serve.cli", "serve", "--device", "cuda", "--port", "1",
         "--model-repository", str(BUNDLED_REPOSITORY)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "device 'cuda' requested but the NVIDIA driver is missing" in result.stderr


def test_loading_model_answers_503_with_retry_after(tapeserve_server, tmp_path) -> None:
    """While a model loads (held by the test: its initialize waits at a gate), it and readiness
    say so, then serve."""
    gate = builders.write_gated_model(tmp_path, "slow", "initialize")
    srv = tapeserve_server(tmp_path, wait="live", extra_args=["--allow-python-models"])
    body = {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    assert srv.get("/v2/health/ready").status_code == 503
    loading = srv.post("/v2/models/slow/infer", json=body)
    assert loading.status_code == 503, loading.text
    assert "still loading" in loading.json()["error"] and loading.headers["Retry-After"] == "1"
    assert srv.get("/v2/models/slow/ready").json() == {"name": "slow", "ready": False}
    assert index(srv)[("slow", "1")]["state"] == "LOADING"
    gate.touch()
    srv.wait_models_final()
    assert srv.get("/v2/health/ready").status_code == 200
    assert srv.post("/v2/models/slow/infer", json=body).status_code == 200
