"""The Dockerfile builds with podman on a locally made Debian base, and the container serves.

The container runs as the pods do (read-only root, writable /tmp, no capabilities, the example
model repository mounted read-only at /models); its V2 answers are compared with onnxruntime run
directly on the host, and `podman stop` must drain and exit 0 within the grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests

from serve.protocol.datatypes import datatype_from_onnx, numpy_dtype
from tests.deploy.manifests import DEPLOY, ROOT
from tests.support.system import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(1800)]

BASE_IMAGE = "localhost/tapeserve-base:bookworm"
IMAGE = "localhost/tapeserve:test"
MODELS = ROOT / "examples" / "models"
GRACE_SECONDS = 45  # terminationGracePeriodSeconds of the Kubernetes Deployment


@pytest.fixture(scope="module")
def podman() -> tuple[str, dict[str, str]]:
    path = require_tool("podman")
    require_tool("runc")
    require_tool("debootstrap")
    return path, os.environ | {"CONTAINERS_CONF": str(DEPLOY / "podman" / "containers.conf")}


def _run(cmd: list[str], env: dict[str, str], timeout: float, check: bool = True):
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-4000:]}"
            f"\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="module")
def image(podman) -> str:
    """Build the base (kept in the podman store once made) and then the Dockerfile."""
    path, env = podman
    start = time.monotonic()
    _run([str(DEPLOY / "podman" / "make-base-image.sh"), BASE_IMAGE], env, timeout=900)
    base_seconds = time.monotonic() - start
    start = time.monotonic()
    _run(
        [path, "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
         "-t", IMAGE, str(ROOT)],
        env,
        timeout=1200,
    )  # fmt: skip
    print(f"\nbase image: {base_seconds:.0f} s, image build: {time.monotonic() - start:.0f} s")
    return IMAGE


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def container(podman, image):
    path, env = podman
    name = f"tapeserve-test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    _run(
        [path, "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         "-p", f"127.0.0.1:{port}:8000", "-v", f"{MODELS}:/models:ro", image],
        env,
        timeout=120,
    )  # fmt: skip
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        logs = _run([path, "logs", name], env, timeout=60, check=False)
        print(f"--- container log ---\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        _run([path, "rm", "-f", "-t", "0", name], env, timeout=120, check=False)


def _wait_ready(podman, name: str, url: str, timeout: float = 180) -> None:
    path, env = podman
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        state = _run([path, "inspect", "-f", "{{.State.Status}}", name], env, timeout=30)
        assert state.stdout.strip() == "running", f"container stopped: {state.stdout}"
        time.sleep(1)
    raise AssertionError(f"{name} not ready after {timeout} s")


def _example_models() -> list[tuple[str, Path]]:
    """(name, latest model.onnx) of every model in the bundled example repository."""
    models = []
    for folder in sorted(p for p in MODELS.iterdir() if p.is_dir()):
        versions = sorted((int(v.name), v) for v in folder.iterdir() if v.name.isdigit())
        if versions:
            models.append((folder.name, versions[-1][1] / "model.onnx"))
    return models


def _v2_request(session: ort.InferenceSession, batch: int) -> tuple[dict, dict]:
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


def test_image_serves_correct_predictions_and_drains_on_stop(podman, container):
    path, env = podman
    name, url = container
    _wait_ready(podman, name, url)

    assert requests.get(f"{url}/v2/health/live", timeout=5).status_code == 200
    health = _run([path, "healthcheck", "run", name], env, timeout=60, check=False)
    assert health.returncode == 0, f"HEALTHCHECK failed: {health.stdout} {health.stderr}"
    uid = _run([path, "exec", name, "id", "-u"], env, timeout=60).stdout.strip()
    assert uid != "0" and uid == "10001"
    pid1 = _run([path, "exec", name, "cat", "/proc/1/cmdline"], env, timeout=60).stdout
    assert "gunicorn" in pid1.replace("\0", " "), f"PID 1 is not Gunicorn: {pid1!r}"

    models = _example_models()
    assert models, f"no models in {MODELS}"
    for model, onnx_path in models:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        feeds, body = _v2_request(session, batch=3)
        expected = dict(
            zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True)
        )
        response = requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert set(outputs) == set(expected)
        for out_name, want in expected.items():
            got = np.asarray(outputs[out_name]["data"]).reshape(outputs[out_name]["shape"])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    # A request whose body is still arriving when SIGTERM lands must still be answered.
    model, onnx_path = models[0]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds, body = _v2_request(session, batch=2)
    expected = session.run(None, feeds)
    start = time.monotonic()
    with _request_in_flight(url, f"/v2/models/{model}/infer", json.dumps(body).encode()) as finish:
        stop = subprocess.Popen(
            [path, "stop", "-t", str(GRACE_SECONDS), name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(2)  # SIGTERM has reached Gunicorn: it is draining now
        assert stop.poll() is None, "the container exited with a request in flight"
        status, answer = finish()
    assert status == 200, answer
    got = np.asarray(answer["outputs"][0]["data"]).reshape(answer["outputs"][0]["shape"])
    np.testing.assert_allclose(got, expected[0], rtol=1e-5, atol=1e-6)

    stop_output, _ = stop.communicate(timeout=GRACE_SECONDS + 60)
    stopped_after = time.monotonic() - start
    assert stop.returncode == 0, stop_output
    state = json.loads(_run([path, "inspect", name], env, timeout=30).stdout)[0]["State"]
    logs = _run([path, "logs", name], env, timeout=60)
    print(f"\npodman stop took {stopped_after:.1f} s, exit code {state['ExitCode']}")
    assert state["ExitCode"] == 0, "Gunicorn must exit 0 after a graceful drain, not be killed"
    assert stopped_after < GRACE_SECONDS
    assert "Handling signal: term" in logs.stdout + logs.stderr


@contextlib.contextmanager
def _request_in_flight(url: str, path: str, body: bytes):
    """Send the headers and half the body now; the yielded callable sends the rest and returns
    (status, parsed JSON body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        half = len(body) // 2
        sock.sendall(head + body[:half])
        time.sleep(0.5)  # the worker has taken the connection and is reading the body

        def finish() -> tuple[int, dict]:
            sock.sendall(body[half:])
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
            status_line, _, rest = response.partition(b"\r\n")
            _, _, payload = rest.partition(b"\r\n\r\n")
            return int(status_line.split()[1]), json.loads(payload)

        yield finish
