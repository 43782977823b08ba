"""deploy/gpu-check.sh: passes on an NVIDIA GPU, skips elsewhere, never passes on a fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.deploy.manifests import DEPLOY

SCRIPT = DEPLOY / "gpu-check.sh"


def _run(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env=os.environ | {"PYTHON": sys.executable} | env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.gpu
def test_gpu_check():
    result = _run()
    last = result.stdout.strip().splitlines()[-1]
    if last.startswith("SKIP:"):
        pytest.skip(last)
    assert result.returncode == 0, result.stdout + result.stderr
    assert last.startswith("GPU CHECK PASSED")
    assert "| batch | CPU samples/s | GPU samples/s | GPU / CPU |" in result.stdout


def test_without_a_gpu_the_check_skips_or_fails_never_passes():
    if not _run().stdout.strip().splitlines()[-1].startswith("SKIP:"):
        pytest.skip("a GPU is visible: test_gpu_check covers this machine")
    forced = _run(
        TAPESERVE_GPU_CHECK_FORCE="1",
        TAPESERVE_GPU_CHECK_SECONDS="0.05",
        TAPESERVE_GPU_CHECK_BATCHES="1,4",
    )
    assert forced.returncode == 1, forced.stdout + forced.stderr
    assert "FAIL: the CUDA provider is not active" in forced.stdout
    assert "| 4 |" in forced.stdout, "throughput is still reported"
    assert forced.stdout.strip().splitlines()[-1].startswith("GPU CHECK FAILED")
