"""Prometheus metrics across several Gunicorn workers (multiprocess mode)."""

from __future__ import annotations

import os
import subprocess
import sys

import requests

from tests.serve.test_batching import metric

N = 40


def test_scrape_counts_exactly_n_requests_across_workers(
    tapeserve_server, small_repository, tmp_path
) -> None:
    metrics_dir = tmp_path / "multiproc"  # a directory of the user's, holding an old run
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale file of an old run")
    (metrics_dir / "notes.txt").write_text("not ours: must survive")
    srv = tapeserve_server(
        small_repository, workers=2, threads=4, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    )
    assert not (metrics_dir / "counter_999999.db").exists()
    assert (metrics_dir / "notes.txt").exists()
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    for _ in range(N):
        # a new connection each time, so the kernel spreads requests over both workers
        response = requests.post(f"{srv.url}/v2/models/mlp/infer", json=body, timeout=30)
        assert response.status_code == 200
    text = srv.metrics()
    requests_ok = 'tapeserve_requests_total{code="200",model="mlp",protocol="v2",version="1"}'
    line = next(line for line in text.splitlines() if line.startswith(requests_ok))
    assert float(line.rsplit(" ", 1)[1]) == N
    assert metric(text, "tapeserve_inference_samples_total", "mlp") == N
    duration = 'tapeserve_request_duration_seconds_count{model="mlp",protocol="v2",version="1"}'
    assert f"{duration} {float(N)}" in text
    ready = 'tapeserve_model_ready{device="cpu",model="mlp",version="1"} 1.0'
    assert ready in text  # livemin over both workers: ready in each
    assert "tapeserve_inflight_requests 0.0" in text
    for name in (
        "tapeserve_queue_duration_seconds_bucket",
        "tapeserve_compute_duration_seconds_bucket",
        "tapeserve_batch_size_bucket",
        "tapeserve_queue_depth",
    ):
        assert f"{name}{{" in text


def test_metric_names_contract(server) -> None:
    """Every name issue 2 promises is exposed once used (rejections: see test_errors)."""
    server.post("/v2/models/mlp/infer", json={"inputs": [{"name": "x", "shape": [1, 16],
                "datatype": "FP32", "data": [0] * 16}]})  # fmt: skip
    text = server.metrics()
    for expected in (
        "# TYPE tapeserve_requests_total counter",
        "# TYPE tapeserve_request_duration_seconds histogram",
        "# TYPE tapeserve_queue_duration_seconds histogram",
        "# TYPE tapeserve_compute_duration_seconds histogram",
        "# TYPE tapeserve_batch_size histogram",
        "# TYPE tapeserve_inference_samples_total counter",
        "# TYPE tapeserve_inference_batches_total counter",
        "# TYPE tapeserve_queue_depth gauge",
        "# TYPE tapeserve_inflight_requests gauge",
        "# TYPE tapeserve_model_ready gauge",
        'tapeserve_model_ready{device="cpu",model="mlp",version="1"} 1.0',
        'tapeserve_request_duration_seconds_bucket{le="0.005",model="mlp",protocol="v2"',
    ):
        assert expected in text, expected
    assert 'tapeserve_model_ready{device="' in text and 'model="broken",version="1"} 0.0' in text


def test_empty_multiproc_dir_never_puts_metric_files_in_the_working_directory(
    tapeserve_server, small_repository, tmp_path
) -> None:
    """prometheus_client reads an empty PROMETHEUS_MULTIPROC_DIR as the current directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": ""}
    code = "import serve.observability.metrics as m; assert m.multiprocess_dir() is None"
    subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True, timeout=60)
    assert list(cwd.iterdir()) == []
    (cwd / "metrics").mkdir()
    relative = {**env, "PROMETHEUS_MULTIPROC_DIR": "metrics"}
    code = "import serve.observability.metrics as m; print(m.multiprocess_dir())"
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=relative,
                          check=True, timeout=60, capture_output=True, text=True)  # fmt: skip
    assert done.stdout.strip() == str(cwd / "metrics")  # absolute: same folder after chdir

    srv = tapeserve_server(small_repository, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": ""})
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    assert srv.post("/v2/models/mlp/infer", json=body).status_code == 200
    assert "tapeserve_inflight_requests 0.0" in srv.metrics()  # merged over both workers
    assert not list(srv._scratch.glob("*.db")), "metric files in the server's working directory"


def test_a_forked_worker_writes_its_metrics_under_its_own_pid(tmp_path) -> None:
    """The cached pid prometheus_client is given is refreshed in a forked child: each worker
    keeps its own metric files, as with os.getpid()."""
    import textwrap

    script = textwrap.dedent(
        """
        import os, sys
        from serve.observability import metrics
        pid = os.fork()
        if pid == 0:
            metrics.REQUESTS.labels("m", "1", "v2", "200").inc(3)
            os._exit(0)
        os.waitpid(pid, 0)
        metrics.REQUESTS.labels("m", "1", "v2", "200").inc(2)
        print(pid, os.getpid())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    child, parent = done.stdout.split()
    files = {p.name for p in tmp_path.iterdir()}
    assert f"counter_{child}.db" in files and f"counter_{parent}.db" in files, files
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    value = registry.get_sample_value(
        "tapeserve_requests_total", {"model": "m", "version": "1", "protocol": "v2", "code": "200"}
    )
    assert value == 5.0
