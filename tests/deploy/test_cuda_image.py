"""The CUDA image (VARIANT=cuda) builds here, proves its libraries without a GPU, and stays lean.

No GPU is needed: the libraries are checked by deploy/cuda_libraries.py inside the image (the same
script `make gpu-check` runs on a GPU host with the driver required), and the server's device
handling is exercised as a GPU-less host sees it: `auto` serves on CPU with a warning, `cuda`
refuses to start and says why.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

from tests.deploy.containers import (
    MODELS,
    assert_predictions_match,
    free_port,
    run,
    wait_ready,
)
from tests.deploy.manifests import DEPLOY, deploy_module

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(2400)]

CHECK = DEPLOY / "cuda_libraries.py"

#: Run inside an image: what makes it lean or not, as JSON.
INVENTORY = r"""
import collections, glob, json, os, shutil
libraries = collections.defaultdict(set)
for top in ("/opt/venv", "/usr/lib", "/usr/local", "/lib"):
    for folder, _, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            if name.startswith("lib") and ".so" in name and not os.path.islink(path):
                libraries[name].add(os.path.realpath(path))
dists = collections.Counter(
    os.path.basename(p).split("-")[0].lower().replace("_", "-")
    for p in glob.glob("/opt/venv/lib/python3*/site-packages/*.dist-info")
)
wheels = [os.path.join(f, n) for top in ("/opt", "/usr/local", "/var", "/root", "/tmp", "/usr/lib")
          for f, _, files in os.walk(top) for n in files if n.endswith(".whl")]
print(json.dumps({
    "compilers": [c for c in ("gcc", "cc", "c++", "g++", "clang", "ld", "as", "nvcc", "make")
                  if shutil.which(c)],
    "duplicate_libraries": {n: sorted(p) for n, p in libraries.items() if len(p) > 1},
    "duplicate_distributions": [d for d, n in dists.items() if n > 1],
    "distributions": sorted(dists),
    "wheels": wheels,
    "pip_caches": [p for p in ("/root/.cache/pip", "/tmp/.cache/pip") if os.path.exists(p)],
    "nvidia_bytes": sum(os.path.getsize(os.path.join(f, n))
                        for f, _, files in os.walk("/opt/venv") for n in files
                        if "/site-packages/nvidia/" in f + "/"),
}))
"""


def _python(podman, image: str, *args: str, volumes: tuple[str, ...] = ()):
    path, env = podman
    mounts = [f"--volume={v}" for v in volumes]
    command = [path, "run", "--rm", *mounts, "--entrypoint", "python3", image, *args]
    return run(command, env, timeout=300, check=False)


def _size(podman, image: str) -> int:
    path, env = podman
    return int(run([path, "image", "inspect", "--format", "{{.Size}}", image], env, 60).stdout)


def test_cuda_libraries_are_complete_except_the_driver(podman, cuda_image):
    result = _python(podman, cuda_image, "/check.py", "--json", volumes=(f"{CHECK}:/check.py:ro",))
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["ok"], report["problems"]
    assert not report["preload_failures"]
    for library in ("libcudnn.so.9", "libcublasLt.so.13", "libcublas.so.13", "libcudart.so.13"):
        assert library in report["preloaded"], f"preload_dlls did not load {library}"
    provider = next(v for k, v in report["checked"].items() if k.endswith("providers_cuda.so"))
    assert set(provider["missing"]) == {"libcuda.so.1"}, "only the driver's library is missing"
    assert {"libcublasLt.so.13", "libcurand.so.10"} <= set(provider["resolved"])
    assert all(
        "/site-packages/nvidia/" in provider["resolved"][lib]
        for lib in ("libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudart.so.13")
    )
    cudnn = [k for k in report["checked"] if "libcudnn" in k]
    assert len(cudnn) >= 5, "cuDNN's engine libraries (loaded at run time) are checked too"
    (error,) = report["dlopen"].values()
    assert "libcuda.so.1" in error, "the real loader fails on the driver's library alone"
    assert report["tensorrt_shipped"] is False
    # The same check with the driver required is what a GPU host runs; here it must fail.
    strict = _python(
        podman, cuda_image, "/check.py", "--require-driver", volumes=(f"{CHECK}:/check.py:ro",)
    )
    assert strict.returncode == 1 and "libcuda.so.1 is not found" in strict.stdout


def test_cpu_image_has_no_cuda_libraries_and_the_check_says_what_is_missing(podman, image):
    result = _python(podman, image, "/check.py", "--json", volumes=(f"{CHECK}:/check.py:ro",))
    report = json.loads(result.stdout)
    assert result.returncode == 1 and not report["ok"]
    assert any("libcudnn.so.9" in p for p in report["problems"])
    assert any("libcublasLt.so.13 is not found" in p for p in report["problems"])


def test_images_are_lean_and_the_cuda_one_adds_only_nvidia_libraries(podman, image, cuda_image):
    cpu_size, cuda_size = _size(podman, image), _size(podman, cuda_image)
    print(f"\nimage sizes: CPU {cpu_size / 1e6:,.0f} MB, CUDA {cuda_size / 1e6:,.0f} MB")
    cpu = json.loads(_python(podman, image, "-c", INVENTORY).stdout)
    cuda = json.loads(_python(podman, cuda_image, "-c", INVENTORY).stdout)
    for found in (cpu, cuda):
        assert not found["compilers"], "no compilers or build tools at run time"
        assert not found["duplicate_libraries"], "each shared library once"
        assert not found["duplicate_distributions"], "each wheel installed once"
        assert not found["pip_caches"]
        # Debian's python3-venv keeps its ensurepip seeds; nothing else leaves a wheel file.
        assert all(w.startswith("/usr/share/python-wheels/") for w in found["wheels"])
    added = set(cuda["distributions"]) - set(cpu["distributions"])
    assert added and all(d.startswith("nvidia-") for d in added), added
    assert set(cpu["distributions"]) <= set(cuda["distributions"])
    assert cpu["nvidia_bytes"] == 0
    # The CUDA layer is the NVIDIA libraries and nothing besides (no second venv, no caches).
    assert cuda_size - cpu_size <= cuda["nvidia_bytes"] * 1.05 + 20e6


@pytest.fixture
def container(podman):
    """Start the image with arguments; yields (name, url); removes the container afterwards."""
    path, env = podman
    started = []

    def start(image: str, *args: str, detach: bool = True):
        name = f"tapeserve-cuda-test-{uuid.uuid4().hex[:8]}"
        port = free_port()
        command = [
            path,
            "run",
            "--name",
            name,
            "--user=10001:10001",
            "--read-only",
            "--tmpfs=/tmp:rw,mode=1777",
            f"--volume={MODELS}:/models:ro",
            "-p",
            f"127.0.0.1:{port}:8000",
            *(["-d"] if detach else []),
            image,
            *args,
        ]
        started.append(name)
        return name, f"http://127.0.0.1:{port}", run(command, env, timeout=300, check=False)

    yield start
    for name in started:
        run([path, "rm", "-f", "-t", "0", name], env, timeout=120, check=False)


def test_device_auto_starts_warns_and_serves_on_cpu(podman, cuda_image, container):
    path, env = podman
    name, url, started = container(cuda_image, "--device", "auto", "--workers", "1")
    assert started.returncode == 0, started.stderr

    def running() -> bool:
        state = run([path, "inspect", "-f", "{{.State.Status}}", name], env, timeout=30)
        return state.stdout.strip() == "running"

    wait_ready(url, running)
    assert assert_predictions_match(url) >= 1
    logs = run([path, "logs", name], env, timeout=60)
    text = logs.stdout + logs.stderr
    assert re.search(r"WARNING\] tapeserve\.\S*runtime: device auto: .+; running on CPU", text), (
        text
    )
    assert re.search(r"ready on cpu \(CPUExecutionProvider", text), text


def test_device_cuda_refuses_to_start_and_says_why(podman, cuda_image, container):
    name, _, started = container(cuda_image, "--device", "cuda", detach=False)
    output = started.stdout + started.stderr
    assert started.returncode != 0, output
    assert "device 'cuda' requested but the NVIDIA driver is missing" in output, output
    assert "nvidia.com/gpu=all" in output, "it says how to give a container the driver"


def test_gpu_check_container_step_fails_without_the_nvidia_runtime_and_says_why(
    podman, cuda_image, monkeypatch
):
    """Step 7 of `make gpu-check` on this machine: podman has no NVIDIA CDI device to give."""
    gpu_check = deploy_module("gpu_check")
    monkeypatch.setenv("CONTAINERS_CONF", podman[1]["CONTAINERS_CONF"])
    opts = gpu_check.Options(image=cuda_image, engine="podman")
    with pytest.raises(gpu_check.StepFailed, match=rf"CUDA libraries in {cuda_image}: .*"
                       r"nvidia\.com/gpu=all"):  # fmt: skip
        gpu_check.step_container(opts)
