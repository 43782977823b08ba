"""The Dockerfile builds with podman on a locally made Debian base, and the container serves.

The container runs as the Kubernetes pod of the cpu overlay does (its ConfigMap environment, user,
read-only root, emptyDirs as tmpfs, no capabilities, the example model repository mounted
read-only); its V2 answers are compared with onnxruntime run directly on the host, and
`podman stop` must drain and exit 0 within the pod's grace period.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import uuid

import numpy as np
import onnxruntime as ort
import pytest
import requests

from tests.deploy.containers import (
    MODELS,
    assert_predictions_match,
    example_models,
    free_port,
    run,
    v2_request,
    wait_ready,
)
from tests.deploy.kustomize import render
from tests.deploy.manifests import KUBERNETES, by_kind

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(1800)]

# The pod of the cpu overlay, as Kubernetes would run it.
POD = render(KUBERNETES / "overlays" / "cpu")
GRACE_SECONDS = by_kind(POD, "Deployment")["spec"]["template"]["spec"][
    "terminationGracePeriodSeconds"
]


def pod_run_flags() -> tuple[list[str], int]:
    """`podman run` flags equivalent to the Deployment's pod, and the container port.

    Environment from the ConfigMap, the pod's user, read-only root, a tmpfs for every emptyDir
    mount, no capabilities, the example repository at the models mount.
    """
    pod = by_kind(POD, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = by_kind(POD, "ConfigMap")["data"]
    security = container["securityContext"]
    flags = [f"--user={pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"]
    flags += [f"--env={key}={value}" for key, value in config.items()]
    if security["readOnlyRootFilesystem"]:
        flags.append("--read-only")
    flags += [f"--cap-drop={cap}" for cap in security["capabilities"]["drop"]]
    if not security["allowPrivilegeEscalation"]:
        flags.append("--security-opt=no-new-privileges")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            flags.append(f"--tmpfs={mount['mountPath']}:rw,mode=1777")
        elif "persistentVolumeClaim" in volume:
            flags.append(f"--volume={MODELS}:{mount['mountPath']}:ro")
    port = next(p for p in container["ports"] if p["name"] == "http")
    return flags, port["containerPort"]


@pytest.fixture
def container(podman, image):
    path, env = podman
    name = f"tapeserve-test-{uuid.uuid4().hex[:8]}"
    host_port = free_port()
    flags, port = pod_run_flags()
    run(
        [path, "run", "-d", "--name", name, *flags, "-p", f"127.0.0.1:{host_port}:{port}", image],
        env,
        timeout=120,
    )
    try:
        yield name, f"http://127.0.0.1:{host_port}"
    finally:
        logs = run([path, "logs", name], env, timeout=60, check=False)
        print(f"--- container log ---\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        run([path, "rm", "-f", "-t", "0", name], env, timeout=120, check=False)


def test_image_serves_correct_predictions_and_drains_on_stop(podman, container):
    path, env = podman
    name, url = container

    def running() -> bool:
        state = run([path, "inspect", "-f", "{{.State.Status}}", name], env, timeout=30)
        return state.stdout.strip() == "running"

    wait_ready(url, running)

    assert requests.get(f"{url}/v2/health/live", timeout=5).status_code == 200
    health = run([path, "healthcheck", "run", name], env, timeout=60, check=False)
    assert health.returncode == 0, f"HEALTHCHECK failed: {health.stdout} {health.stderr}"
    uid = run([path, "exec", name, "id", "-u"], env, timeout=60).stdout.strip()
    assert uid != "0" and uid == "10001"
    pid1 = run([path, "exec", name, "cat", "/proc/1/cmdline"], env, timeout=60).stdout
    assert "gunicorn" in pid1.replace("\0", " "), f"PID 1 is not Gunicorn: {pid1!r}"

    assert_predictions_match(url)
    metrics = requests.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "tapeserve_requests_total{" in metrics.text, "multiprocess metrics on the emptyDir"

    # A request whose body is still arriving when SIGTERM lands must still be answered.
    model, onnx_path = example_models()[0]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds, body = v2_request(session, batch=2)
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
    state = json.loads(run([path, "inspect", name], env, timeout=30).stdout)[0]["State"]
    logs = run([path, "logs", name], env, timeout=60)
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
