"""deploy/compose.yaml parses, references only what exists, and its tapeserve service serves."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from serve.settings import ENV_PREFIX, Settings
from tests.deploy.containers import assert_predictions_match, free_port, run, wait_ready
from tests.deploy.manifests import DEPLOY, ROOT, load_yaml
from tests.support.system import require_module, require_tool

COMPOSE = DEPLOY / "compose.yaml"
_DEFAULTED = re.compile(r"^\$\{(\w+):-(.*)\}$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def _resolve(value: str) -> str:
    """`${VAR:-default}` -> default (what an unset environment gives)."""
    match = _DEFAULTED.match(value)
    return match.group(2) if match else value


def _bind_sources(service: dict) -> list[str]:
    sources = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume["type"] == "bind":
                sources.append(_resolve(volume["source"]))
        elif volume.split(":")[0].startswith((".", "/")):
            sources.append(volume.split(":")[0])
    return sources


def test_services_and_profiles(compose):
    services = compose["services"]
    assert set(services) == {"tapeserve", "tapeserve-gpu", "prometheus", "grafana"}
    assert services["tapeserve"]["profiles"] == ["cpu"]
    assert services["tapeserve-gpu"]["profiles"] == ["gpu"]
    assert "tapeserve" in services["tapeserve-gpu"]["networks"]["default"]["aliases"]
    (device,) = services["tapeserve-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert services["tapeserve-gpu"]["environment"]["TAPESERVE_DEVICE"] == "cuda"
    assert services["tapeserve-gpu"]["build"]["args"]["VARIANT"] == "cuda"


def test_every_referenced_file_exists(compose):
    base = COMPOSE.parent
    for name, service in compose["services"].items():
        for source in _bind_sources(service):
            assert (base / source).exists(), f"{name}: bind source {source} does not exist"
        build = service.get("build")
        if build:
            context = base / build["context"]
            assert (context / build["dockerfile"]).is_file(), f"{name}: no Dockerfile"
    assert (base / "../examples/models").resolve() == ROOT / "examples" / "models"


def test_named_volumes_are_declared(compose):
    declared = set(compose["volumes"])
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.split(":")[0].startswith((".", "/")):
                used.add(volume.split(":")[0])
    assert used == declared == {"prometheus-data", "grafana-data"}


def test_tapeserve_settings_are_known_and_parse(compose):
    known = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    for name in ("tapeserve", "tapeserve-gpu"):
        service = compose["services"][name]
        environment = {k: _resolve(str(v)) for k, v in service["environment"].items()}
        assert set(environment) <= known, f"{name}: unknown settings"
        Settings.from_env(environment)
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert [v["target"] for v in service["volumes"]] == ["/models"]


def test_prometheus_scrapes_tapeserve_with_the_shared_rules(compose):
    prometheus = compose["services"]["prometheus"]
    (config,) = prometheus["configs"]
    scrape = yaml.safe_load(compose["configs"][config["source"]]["content"])
    assert config["target"] in " ".join(prometheus["command"])
    shared = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = scrape["scrape_configs"]
    (shared_job,) = shared["scrape_configs"]
    assert job["job_name"] == shared_job["job_name"], "alerts and dashboard select by job"
    assert job["static_configs"][0]["targets"] == ["tapeserve:8000"]
    mounted = {v["target"]: v["source"] for v in prometheus["volumes"] if isinstance(v, dict)}
    for rule_file in scrape["rule_files"]:
        assert rule_file in mounted, f"rule file {rule_file} is not mounted"


def test_grafana_provisioning_paths_line_up(compose):
    grafana = compose["services"]["grafana"]
    mounts = {v["target"]: v["source"] for v in grafana["volumes"] if isinstance(v, dict)}
    providers = load_yaml(DEPLOY / "grafana/provisioning/dashboards/tapeserve.yml")["providers"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path in mounts, f"dashboards provider reads {path}, which is not mounted"
        assert any((DEPLOY / mounts[path]).glob("*.json"))
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (DEPLOY / mounts[str(home.parent)] / home.name).is_file()
    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")
    (datasource,) = datasources["datasources"]
    host, port = re.match(r"http://([\w-]+):(\d+)", datasource["url"]).groups()
    assert host in compose["services"]
    assert f"{port}:{port}" in compose["services"][host]["ports"][0]


def _podman_compose(*args: str, env: dict[str, str], timeout: float = 120):
    require_module("podman_compose")
    command = [sys.executable, "-m", "podman_compose", "-f", str(COMPOSE), *args]
    return run(command, env, timeout=timeout)


@pytest.mark.system
@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_podman_compose_resolves_the_stack(profile):
    require_tool("podman")
    env = os.environ.copy()
    for name in (
        "TAPESERVE_MODELS",
        "TAPESERVE_IMAGE",
        "TAPESERVE_GPU_IMAGE",
        "TAPESERVE_HOST_PORT",
        "TAPESERVE_GRPC_HOST_PORT",
    ):
        env.pop(name, None)
    resolved = yaml.safe_load(_podman_compose("--profile", profile, "config", env=env).stdout)
    server = "tapeserve" if profile == "cpu" else "tapeserve-gpu"
    assert set(resolved["services"]) == {server, "prometheus", "grafana"}
    (models,) = resolved["services"][server]["volumes"]
    assert (COMPOSE.parent / models["source"]).resolve() == ROOT / "examples" / "models"
    assert resolved["services"][server]["ports"] == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001"]
    if profile == "gpu":  # the CUDA image, built from the CPU image's base with NVIDIA's wheels
        assert resolved["services"][server]["build"]["args"] == ["VARIANT=cuda"]
        assert resolved["services"][server]["image"] == "localhost/tapeserve:cuda"


@pytest.mark.slow
@pytest.mark.system
@pytest.mark.timeout(1800)
def test_compose_service_serves(podman, image):
    """`podman-compose up tapeserve` with the compose file's own settings answers predictions."""
    path, env = podman
    port = free_port()
    project = f"tapeserve-test-{uuid.uuid4().hex[:8]}"
    env = env | {"TAPESERVE_IMAGE": image, "TAPESERVE_HOST_PORT": str(port)}
    compose = ("-p", project, "--profile", "cpu")
    _podman_compose(*compose, "up", "-d", "--no-build", "tapeserve", env=env, timeout=300)
    try:
        names = run([path, "ps", "-q", "--filter", f"label=io.podman.compose.project={project}"],
                    env, timeout=60).stdout.split()  # fmt: skip
        assert len(names) == 1, "exactly the tapeserve service runs"

        def running() -> bool:
            state = run([path, "inspect", "-f", "{{.State.Status}}", names[0]], env, timeout=30)
            return state.stdout.strip() == "running"

        wait_ready(f"http://127.0.0.1:{port}", running)
        assert assert_predictions_match(f"http://127.0.0.1:{port}") >= 1
        inspect = json.loads(run([path, "inspect", names[0]], env, timeout=30).stdout)[0]
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
    finally:
        _podman_compose(*compose, "down", "-t", "45", env=env, timeout=300)


@pytest.mark.system
def test_promtool_accepts_the_compose_prometheus_config(compose, tmp_path):
    """The inline scrape config, with the rule files it mounts, passes `promtool check config`."""
    promtool = require_tool("promtool")
    prometheus = compose["services"]["prometheus"]
    (config,) = prometheus["configs"]
    scrape = yaml.safe_load(compose["configs"][config["source"]]["content"])
    mounted = {v["target"]: v["source"] for v in prometheus["volumes"] if isinstance(v, dict)}
    scrape["rule_files"] = [str(DEPLOY / mounted[path]) for path in scrape["rule_files"]]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    result = run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], {}, timeout=60)
    assert "SUCCESS" in result.stdout + result.stderr
