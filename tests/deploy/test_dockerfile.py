"""The Dockerfile's contract, read statically: what the image tests cannot see from one build."""

from __future__ import annotations

import json
import re

import tomllib

from tests.deploy.manifests import DEPLOY, ROOT, load_yaml

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _instructions(keyword: str) -> list[str]:
    """Arguments of every `keyword` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{keyword}\s+(.*)$", joined, re.M)]


def test_default_base_is_public_and_cuda_base_is_one_tag_everywhere():
    (default,) = [a for a in _instructions("ARG") if a.startswith("BASE_IMAGE=")]
    assert default == "BASE_IMAGE=python:3.11-slim-bookworm"
    cuda_tags = set(re.findall(r"nvidia/cuda:[\w.-]+", DOCKERFILE))
    assert len(cuda_tags) == 1, cuda_tags
    (cuda,) = cuda_tags
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", cuda)
    for doc in (ROOT / "docs" / "deploy.md", ROOT / "README.md"):
        assert set(re.findall(r"nvidia/cuda:[\w.-]+", doc.read_text())) <= {cuda}, doc


def test_cuda_variant_is_the_cpu_base_plus_the_cuda_extra_wherever_a_gpu_image_is_built():
    """compose's gpu profile and the Kubernetes gpu overlay use the wheel-based CUDA variant."""
    assert "VARIANT=cpu" in _instructions("ARG"), "CPU unless asked"
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (cuda,) = extra["optional-dependencies"]["cuda"]
    assert cuda.startswith("onnxruntime-gpu[cuda,cudnn]")
    runtime = DOCKERFILE[DOCKERFILE.rindex("FROM ") :]
    assert "cuda-requirements.txt" in runtime and '"${VARIANT}"' in runtime
    compose = load_yaml(DEPLOY / "compose.yaml")["services"]
    assert compose["tapeserve-gpu"]["build"]["args"] == {"VARIANT": "cuda"}, "same base as CPU"
    assert compose["tapeserve-gpu"]["image"].endswith(":cuda}")
    overlay = DEPLOY / "kubernetes" / "overlays" / "gpu" / "kustomization.yaml"
    assert "VARIANT=cuda" in overlay.read_text()
    assert load_yaml(overlay)["images"][0]["newTag"].endswith("-cuda")
    assert "nvidia/cuda" not in overlay.read_text()


def test_runtime_stage_runs_gunicorn_as_pid_1_as_a_non_root_user():
    stages = _instructions("FROM")
    assert len(stages) >= 3 and stages[-1].endswith("AS runtime"), "multi-stage, runtime last"
    runtime = DOCKERFILE[DOCKERFILE.rindex("FROM ") :]
    (user,) = re.findall(r"^USER\s+(\S+)$", runtime, re.M)
    assert user.split(":")[0] in {"${APP_UID}", "10001"}
    assert re.search(r"^ARG APP_UID=10001$", DOCKERFILE, re.M)
    (entrypoint,) = _instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["tapeserve", "serve"], "exec form, no shell in between"
    assert not _instructions("CMD"), "a CMD would be appended to tapeserve serve as arguments"
    (healthcheck,) = _instructions("HEALTHCHECK")
    assert "/v2/health/ready" in healthcheck and "CMD [" in healthcheck
    env = " ".join(_instructions("ENV"))
    for setting in ("TAPESERVE_MODEL_REPOSITORY=/models", "TAPESERVE_HOST=0.0.0.0"):
        assert setting in env
    assert not re.search(r"(?i)(token|password|secret)\w*=", env), "no secrets baked in"


def test_build_context_is_only_what_the_build_copies():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "everything is excluded unless listed"
    allowed = {p.lstrip("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for args in _instructions("COPY"):
        if "--from=" in args:
            continue
        copied.update(a.rstrip("/") for a in args.split()[:-1])
    assert copied == allowed, "the whitelist and the COPY sources must agree"
    for path in allowed:
        assert (ROOT / path).exists(), path
