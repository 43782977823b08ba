"""Helpers for the tests that build and run the image with podman."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests

from serve.protocol.datatypes import datatype_from_onnx, numpy_dtype
from tests.deploy.manifests import ROOT

BASE_IMAGE = "localhost/tapeserve-base:bookworm"
IMAGE = "localhost/tapeserve:test"
CUDA_IMAGE = "localhost/tapeserve:test-cuda"
MODELS = ROOT / "examples" / "models"


def run(cmd: list[str], env: dict[str, str], timeout: float, check: bool = True):
    """subprocess.run with output captured; a failure shows the command's output."""
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-4000:]}"
            f"\n{result.stderr[-4000:]}"
        )
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, running: Callable[[], bool], timeout: float = 180) -> None:
    """Poll /v2/health/ready until 200; fail early when `running()` says the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or slow to answer on a loaded machine
        assert running(), "the container stopped before it became ready"
        time.sleep(1)
    raise AssertionError(f"{url} not ready after {timeout} s")


def example_models() -> list[tuple[str, Path]]:
    """(name, latest model.onnx) of every model in the bundled example repository."""
    models = []
    for folder in sorted(p for p in MODELS.iterdir() if p.is_dir()):
        versions = sorted((int(v.name), v) for v in folder.iterdir() if v.name.isdigit())
        if versions:
            models.append((folder.name, versions[-1][1] / "model.onnx"))
    return models


def v2_request(session: ort.InferenceSession, batch: int) -> tuple[dict, dict]:
    """Seeded inputs for every model input: (onnxruntime feeds, V2 JSON request body)."""
    rng = np.random.default_rng(0)
    feeds, inputs = {}, []
    for arg in session.get_inputs():
        shape = [batch if not isinstance(d, int) or i == 0 else d for i, d in enumerate(arg.shape)]
        datatype = datatype_from_onnx(arg.type)
        array = rng.standard_normal(shape).astype(numpy_dtype(datatype))
        feeds[arg.name] = array
        inputs.append(
            {"name": arg.name, "datatype": datatype, "shape": shape, "data": array.ravel().tolist()}
        )
    return feeds, {"inputs": inputs}


def assert_predictions_match(url: str, batch: int = 3) -> int:
    """Each example model answers V2 requests as onnxruntime on the host does; returns how many."""
    models = example_models()
    assert models, f"no models in {MODELS}"
    for model, onnx_path in models:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        feeds, body = v2_request(session, batch)
        names = [o.name for o in session.get_outputs()]
        expected = dict(zip(names, session.run(None, feeds), strict=True))
        response = requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert set(outputs) == set(expected)
        for name, want in expected.items():
            got = np.asarray(outputs[name]["data"]).reshape(outputs[name]["shape"])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    return len(models)
