"""deploy/gpu-check.sh and deploy/gpu_check.py: passes on an NVIDIA GPU, skips elsewhere, and
without a GPU every GPU step fails (never passes on a CPU fallback) while the rest still runs.

What a GPU alone can show runs under the `gpu` mark; the script's logic runs here: the step order,
the summary and exit status, the CPU half of the throughput table through real servers, and the
NVML readings (NVML faked at its own boundary: the pynvml module) through tapeserve's real /metrics
collector into the check's parser.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from serve.settings import Settings
from tests.deploy.manifests import DEPLOY, deploy_module

SCRIPT = DEPLOY / "gpu-check.sh"
STEPS = [
    "CUDA libraries",
    "CUDA provider",
    "CPU/GPU agreement",
    "throughput",
    "GPU memory per worker",
    "NVML gauges in /metrics",
    "container",
]


gpu_check = deploy_module("gpu_check")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=os.environ | {"PYTHON": sys.executable} | env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _gpu_visible() -> bool:
    return not _run().stdout.strip().splitlines()[-1].startswith("SKIP:")


@pytest.mark.gpu
def test_gpu_check():
    result = _run("--install-cuda")
    last = result.stdout.strip().splitlines()[-1]
    if last.startswith("SKIP:"):
        pytest.skip(last)
    assert result.returncode == 0, result.stdout + result.stderr
    assert last.startswith("GPU CHECK PASSED")
    for step in STEPS:
        assert f"| {step} | PASS |" in result.stdout


def test_without_a_gpu_the_check_skips_and_installs_nothing():
    if _gpu_visible():
        pytest.skip("a GPU is visible: test_gpu_check covers this machine")
    result = _run("--install-cuda")
    assert result.returncode == 0
    assert result.stdout.strip() == (
        "SKIP: no NVIDIA GPU here (no nvidia-smi on PATH, no /dev/nvidia* device)"
    )


def test_unknown_arguments_are_usage_errors():
    result = _run("--gpus", "2")
    assert result.returncode == 2 and "unknown argument --gpus" in result.stderr


@pytest.mark.slow
@contextlib.contextmanager
def _listening_on(port: int) -> Iterator[None]:
    """Something else listens on `port` meanwhile (this, or whatever already does)."""
    with socket.socket() as sock:
        with contextlib.suppress(OSError):  # taken already: the same situation
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield


def test_forced_without_a_gpu_every_gpu_step_fails_and_the_cpu_half_is_measured():
    if _gpu_visible():
        pytest.skip("a GPU is visible: test_gpu_check covers this machine")
    # The check's servers must not depend on the machine's other servers: the default gRPC
    # port held by another one (a developer's `make serve`, a second check) changes nothing.
    with _listening_on(Settings().grpc_port):
        forced = _run(
            "--no-container",
            TAPESERVE_GPU_CHECK_FORCE="1",
            TAPESERVE_GPU_CHECK_SECONDS="0.3",
            TAPESERVE_GPU_CHECK_BATCHES="1,8",
            TAPESERVE_GPU_CHECK_ZOO="none",  # the zoo's own test below covers it
        )
    out = forced.stdout
    assert forced.returncode == 1, out + forced.stderr
    headings = [line for line in out.splitlines() if line.startswith("== ")]
    assert headings == [f"== {i}. {step} ==" for i, step in enumerate(STEPS, 1)], "in order"
    rows = {step: f"| {i} | {step} |" for i, step in enumerate(STEPS, 1)}
    for step in STEPS[:-1]:
        assert f"{rows[step]} FAIL |" in out, step
    assert f"{rows['container']} SKIP | --no-container |" in out
    assert "the CUDA provider is not active" in out
    assert "| digits | CPUExecutionProvider |" in out and "not on GPU" in out
    # The CPU servers ran and were measured; the GPU servers refused to start, and said why.
    header = "| batch | CPU 1w samples/s | CPU 2w samples/s | GPU 1w samples/s | GPU 2w samples/s |"
    assert header in out
    table = out.split(header)[1].splitlines()
    for batch in (1, 8):
        (row,) = [line for line in table[:4] if line.startswith(f"| {batch} | ")]
        cpu1, cpu2, gpu1, gpu2, ratio = row.strip("|").split("|")[1:]
        assert float(cpu1.replace(",", "")) > 0 and float(cpu2.replace(",", "")) > 0
        assert gpu1.strip() == gpu2.strip() == "failed" and ratio.strip() == "-"
    assert re.search(
        r"\| throughput \| FAIL \| cuda, 1 worker\(s\): .*device 'cuda' requested but", out
    )
    assert out.strip().splitlines()[-1] == "GPU CHECK FAILED: 6 of 7 step(s)"


def test_a_failing_step_does_not_stop_the_later_ones_and_sets_the_exit_status():
    ran = []

    def fine(name):
        ran.append(name)
        return f"{name} ok"

    def broken():
        ran.append("broken")
        raise KeyError("boom")

    def skipped():
        raise gpu_check.StepSkipped("not asked")

    results = gpu_check.run_steps(
        [
            ("one", lambda: fine("one")),
            ("two", broken),
            ("three", skipped),
            ("four", lambda: fine("four")),
        ]
    )
    assert ran == ["one", "broken", "four"]
    assert [r.status for _, r in results] == ["PASS", "FAIL", "SKIP", "PASS"]
    table, status = gpu_check.summary(results)
    assert status == 1 and "| 2 | two | FAIL | KeyError: 'boom' |" in table
    assert table.endswith("GPU CHECK FAILED: 1 of 4 step(s)")
    table, status = gpu_check.summary([r for r in results if r[1].status != "FAIL"])
    assert status == 0 and table.endswith("GPU CHECK PASSED: one, four")


class FakeNvml:
    """pynvml's API as two GPUs with processes on them report it (the hardware boundary)."""

    class NVMLError(Exception):
        pass

    def __init__(self, processes: dict[int, list[tuple[int, int | None]]]) -> None:
        self.processes = processes

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self.processes[handle]]

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=[42, 7][handle], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=(handle + 1) * 2**30, total=16 * 2**30, free=0)


def test_gpu_memory_is_attributed_to_each_worker_and_an_idle_worker_fails():
    nvml = FakeNvml({0: [(11, 300 * 2**20), (12, 310 * 2**20), (99, 2**30)], 1: [(11, 2**20)]})
    by_pid = gpu_check.gpu_memory_by_pid(nvml)
    assert by_pid == {11: 301 * 2**20, 12: 310 * 2**20, 99: 2**30}
    assert gpu_check.worker_memory([11, 12], by_pid) == [(11, 301 * 2**20), (12, 310 * 2**20)]
    with pytest.raises(gpu_check.StepFailed, match=r"worker\(s\) \[13\] hold no GPU memory"):
        gpu_check.worker_memory([11, 13], by_pid)
    with pytest.raises(gpu_check.StepFailed, match="no worker processes"):
        gpu_check.worker_memory([], by_pid)
    # NVML reports None for a process whose memory it cannot see (e.g. another container).
    assert gpu_check.gpu_memory_by_pid(FakeNvml({0: [(5, None)], 1: []})) == {5: 0}


def test_the_metrics_collector_output_passes_the_gauge_check(monkeypatch):
    """tapeserve's real NVML collector, over a faked pynvml, gives what step 6 accepts."""
    from serve.observability import gpu_metrics

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml({0: [], 1: []}))
    registry = CollectorRegistry()
    registry.register(gpu_metrics.GpuCollector())
    text = generate_latest(registry).decode()
    gauges = gpu_check.gpu_gauges(text)
    assert gauges["1"] == {
        "tapeserve_gpu_utilization_ratio": 0.07,
        "tapeserve_gpu_memory_used_bytes": 2.0 * 2**30,
        "tapeserve_gpu_memory_total_bytes": 16.0 * 2**30,
    }
    assert gpu_check.check_gauges(gauges, 2).startswith("gpu 0: 42% busy, 1,024/16,384 MiB")
    with pytest.raises(gpu_check.StepFailed, match=r"expected gpu=0\.\.2"):
        gpu_check.check_gauges(gauges, 3)
    with pytest.raises(gpu_check.StepFailed, match="none"):
        gpu_check.check_gauges(gpu_check.gpu_gauges("# no GPU series\n"), 1)
    broken = {"0": {**gauges["0"], "tapeserve_gpu_utilization_ratio": 42.0}}
    with pytest.raises(gpu_check.StepFailed, match="not a 0-1 ratio"):
        gpu_check.check_gauges(broken, 1)


def test_models_come_from_the_bundled_repository_and_the_extra_ones(tmp_path, monkeypatch):
    extra = tmp_path / "zoo"
    gpu_check.mlp(extra / "wide" / "3" / "model.onnx", sizes=(4, 8, 2))
    (extra / "wide" / "1").mkdir()  # an older, empty version folder
    monkeypatch.setenv("TAPESERVE_GPU_CHECK_REPOSITORIES", str(extra))
    repositories = gpu_check.model_repositories()
    assert repositories[0] == gpu_check.BUNDLED and repositories[1:] == [extra]
    assert [n for n, _ in gpu_check.repository_models(gpu_check.BUNDLED)] == ["digits", "example"]
    assert gpu_check.repository_models(extra) == [("wide", extra / "wide" / "3" / "model.onnx")]


def test_agreement_comparison_catches_a_wrong_output():
    import numpy as np

    want = [np.ones((2, 3), np.float32), np.arange(4)]
    assert gpu_check.compare(want, [w.copy() for w in want], 1e-3, 1e-4) == (True, 0.0)
    off = [want[0] + 1e-2, want[1]]
    ok, diff = gpu_check.compare(want, off, 1e-3, 1e-4)
    assert not ok and diff == pytest.approx(1e-2)
    assert not gpu_check.compare(want, [want[0], want[1] + 1], 1e-3, 1e-4)[0]
    assert gpu_check.compare(want, [want[0].T, want[1]], 1e-3, 1e-4) == (False, float("inf"))


def test_without_a_container_engine_the_container_step_says_what_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(gpu_check.StepFailed, match="no podman or docker on PATH"):
        gpu_check.container_engine()


def test_agreement_covers_the_bundled_models_and_the_zoo_and_fails_on_a_cpu_fallback(
    tmp_path, capsys
):
    """Without a GPU the CUDA session falls back to CPU: each model is compared and flagged."""
    opts = gpu_check.Options(workdir=tmp_path, zoo_members=("detector", "nonzero"))
    with pytest.raises(gpu_check.StepFailed, match="4 of 4 model") as failed:
        gpu_check.step_agreement(opts)
    table = capsys.readouterr().out
    for name in ("digits", "example", "zoo/detector", "zoo/nonzero"):
        assert re.search(
            rf"\| {name} \| CPUExecutionProvider \| 0\.00e\+00.* \| not on GPU \|", table
        )
    assert "zoo/nonzero (not on GPU)" in str(failed.value)
    assert (tmp_path / "zoo" / "detector" / "1" / "model.onnx").is_file()


def test_zoo_agreement_allows_twice_the_members_own_tolerance():
    import numpy as np

    member = SimpleNamespace(tolerance=lambda output: {"y": 1e-2}.get(output, 1e-5))
    want = {"y": np.array([1.0, 2.0]), "i": np.array([1, 2])}
    assert gpu_check.zoo_agrees(member, want, {"y": np.array([1.0, 2.039]), "i": want["i"]})[0]
    assert not gpu_check.zoo_agrees(member, want, {"y": np.array([1.0, 2.05]), "i": want["i"]})[0]
    assert not gpu_check.zoo_agrees(member, want, {"y": want["y"], "i": np.array([1, 3])})[0]
