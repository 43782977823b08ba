"""A server in poll mode picks up a freshly exported version without a failed request."""

from __future__ import annotations

import threading
import time

import numpy as np
import requests
from click.testing import CliRunner

from engine import checkpoint as engine_checkpoint
from engine.datasets import load_digits
from exporters.cli import export
from exporters.trace import run_model

CLIENTS = 4


def test_poll_mode_server_switches_to_a_new_export_without_a_failed_request(
    trained_mlp, tmp_path, tapeserve_server
):
    _, first = trained_mlp
    # Version 2 is a different model: the same checkpoint with its output layer scaled.
    second = tmp_path / "ckpt2"
    changed = engine_checkpoint.load(first).model
    changed[-1].weight.data[...] *= 0.5
    engine_checkpoint.save(second, changed, input_shape=(64,), labels=[str(d) for d in range(10)])
    models = [engine_checkpoint.load(first).model, engine_checkpoint.load(second).model]
    repo = tmp_path / "models"
    args = ["--repository", str(repo), "--name", "mlp"]
    assert CliRunner().invoke(export, [str(first), *args]).exit_code == 0
    server = tapeserve_server(
        repo, extra_args=["--model-control-mode", "poll", "--poll-interval", "0.3"]
    )
    x = load_digits().x_test[:2]
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    stop, lock = threading.Event(), threading.Lock()
    answers: list[tuple[str, list[float]]] = []
    failures: list[str] = []

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(server.url + "/v2/models/mlp/infer", json=body, timeout=30)
                r.raise_for_status()
                doc = r.json()
                with lock:
                    answers.append((doc["model_version"], doc["outputs"][0]["data"]))
            except Exception as exc:  # every failure counts; none may happen
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        run = CliRunner().invoke(export, [str(second), *args])
        assert run.exit_code == 0 and "version 2" in run.output, run.output
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(v == "2" for v, _ in answers[-20:]):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == []
    versions = [v for v, _ in answers]
    assert "1" in versions and versions[-1] == "2"
    expected = {str(v): run_model(m, x)[0].ravel() for v, m in zip((1, 2), models, strict=True)}
    for version, data in answers:  # every answer is exactly what its version's engine computes
        np.testing.assert_allclose(data, expected[version], rtol=1e-5, atol=1e-5)
