"""Session fixtures for the podman tests: the base image and both tapeserve variants, built once.

The CUDA variant is built after the CPU one and shares its layers (the base, Python, the
dependency venv): only its CUDA layer is new. Downloaded wheels stay in podman's build cache mount,
so later builds in the same store download nothing.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.deploy.containers import BASE_IMAGE, CUDA_IMAGE, IMAGE, run
from tests.deploy.manifests import DEPLOY, ROOT
from tests.support.system import require_tool


@pytest.fixture(scope="session")
def podman() -> tuple[str, dict[str, str]]:
    """podman's path and the environment that points it at deploy/podman/containers.conf."""
    path = require_tool("podman")
    require_tool("runc")
    require_tool("debootstrap")
    return path, os.environ | {"CONTAINERS_CONF": str(DEPLOY / "podman" / "containers.conf")}


@pytest.fixture(scope="session")
def image(podman) -> str:
    """Build the base (kept in the podman store once made) and then the Dockerfile."""
    path, env = podman
    start = time.monotonic()
    run([str(DEPLOY / "podman" / "make-base-image.sh"), BASE_IMAGE], env, timeout=900)
    base_seconds = time.monotonic() - start
    start = time.monotonic()
    run(
        [path, "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
         "-t", IMAGE, str(ROOT)],
        env,
        timeout=1200,
    )  # fmt: skip
    print(f"\nbase image: {base_seconds:.0f} s, image build: {time.monotonic() - start:.0f} s")
    return IMAGE


@pytest.fixture(scope="session")
def cuda_image(podman, image) -> str:
    """The CUDA variant (VARIANT=cuda), on the CPU image's cached layers."""
    path, env = podman
    start = time.monotonic()
    run(
        [path, "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
         "--build-arg", "VARIANT=cuda", "-t", CUDA_IMAGE, str(ROOT)],
        env,
        timeout=1800,
    )  # fmt: skip
    print(f"\nCUDA image build: {time.monotonic() - start:.0f} s")
    return CUDA_IMAGE
