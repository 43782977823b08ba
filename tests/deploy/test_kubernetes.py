"""Kubernetes manifests: schema-valid in every rendering, consistent with server and image."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest

from serve.observability.metrics import INFLIGHT_REQUESTS, QUEUE_DEPTH
from serve.settings import ENV_PREFIX, Settings
from tests.deploy.kustomize import render
from tests.deploy.manifests import (
    KUBERNETES,
    KUBERNETES_VERSIONS,
    KUSTOMIZATIONS,
    ROOT,
    by_kind,
    load_yaml,
    validate,
)

CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
EXPECTED_KINDS = {
    "ConfigMap",
    "PersistentVolumeClaim",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "ServiceMonitor",
}


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request):
    return request.param, render(KUBERNETES / request.param)


def _container(resources):
    deployment = by_kind(resources, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def _config(resources) -> dict[str, str]:
    return by_kind(resources, "ConfigMap")["data"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_resource_validates_strictly(rendered, version):
    _, resources = rendered
    assert {r["kind"] for r in resources} == EXPECTED_KINDS
    for resource in resources:
        if (resource["apiVersion"], resource["kind"]) in CUSTOM_KINDS:
            continue
        validate(resource, version)


def test_validator_rejects_a_broken_deployment(rendered):
    """Guards the test above: a wrong type and an unknown field must both be caught."""
    deployment, container = _container(rendered[1])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, KUBERNETES_VERSIONS[-1])
    deployment["spec"]["replicas"] = 2
    container["readinesProbe"] = container["readinessProbe"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment, KUBERNETES_VERSIONS[-1])


def test_config_map_holds_only_known_settings(rendered):
    known = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    config = _config(rendered[1])
    unknown = {k for k in config if k.startswith(ENV_PREFIX)} - known
    assert not unknown, f"ConfigMap sets variables the server does not read: {unknown}"
    Settings.from_env(config)  # every value parses
    assert config["TAPESERVE_HOST"] == "0.0.0.0"
    assert config["TAPESERVE_MODEL_REPOSITORY"] == "/models"


def test_probes_follow_the_model_server_conventions(rendered):
    _, container = _container(rendered[1])
    port = int(_config(rendered[1])["TAPESERVE_PORT"])
    grpc_port = int(_config(rendered[1])["TAPESERVE_GRPC_PORT"])
    assert container["ports"] == [
        {"name": "http", "containerPort": port, "protocol": "TCP"},
        {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"},
    ]
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "covers slow loads"


def test_grace_period_covers_pre_stop_and_drain(rendered):
    deployment, container = _container(rendered[1])
    config = _config(rendered[1])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop >= 3
    drain = int(config.get("TAPESERVE_GRACEFUL_TIMEOUT", Settings.graceful_timeout))
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + drain + 5


def test_pod_runs_non_root_on_a_read_only_root(rendered):
    deployment, container = _container(rendered[1])
    pod = deployment["spec"]["template"]["spec"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_uid = int(re.search(r"^ARG APP_UID=(\d+)$", dockerfile, re.M).group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    metrics_dir = _config(rendered[1])["PROMETHEUS_MULTIPROC_DIR"]
    for writable in ("/tmp", metrics_dir):
        assert writable in mounts, f"{writable} must be a writable mount"
        assert "emptyDir" in volumes[mounts[writable]["name"]]
    models = mounts["/models"]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    pvc = by_kind(rendered[1], "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == claim


def test_selectors_match_the_pods(rendered):
    resources = rendered[1]
    deployment, _ = _container(resources)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict) -> bool:
        return selector.items() <= pod_labels.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(by_kind(resources, "Service")["spec"]["selector"])
    assert selects(by_kind(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    pdb = by_kind(resources, "PodDisruptionBudget")["spec"]
    assert pdb.get("minAvailable", 0) >= 1 or "maxUnavailable" in pdb


def test_service_monitor_scrapes_the_service(rendered):
    resources = rendered[1]
    monitor = by_kind(resources, "ServiceMonitor")
    service = by_kind(resources, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"], "a ServiceMonitor needs at least one endpoint"
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"


def test_autoscaler_uses_a_metric_the_adapter_provides(rendered):
    resources = rendered[1]
    hpa = by_kind(resources, "HorizontalPodAutoscaler")
    deployment = by_kind(resources, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    adapter = load_yaml(KUBERNETES / "prometheus-adapter" / "values.yaml")
    provided = {}
    for rule in adapter["rules"]["custom"]:
        series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"].strip("^$"), series)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        provided[rule["name"]["as"]] = series
    exported = {INFLIGHT_REQUESTS._name, QUEUE_DEPTH._name}
    assert set(provided.values()) <= exported, "the adapter must query metrics the server exports"

    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] in provided
    assert metric["pods"]["target"]["type"] == "AverageValue"


def test_overlays_differ_where_they_must():
    cpu = render(KUBERNETES / "overlays" / "cpu")
    gpu = render(KUBERNETES / "overlays" / "gpu")
    _, cpu_container = _container(cpu)
    gpu_deployment, gpu_container = _container(gpu)

    assert "nvidia.com/gpu" not in str(cpu_container["resources"])
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _config(cpu)["TAPESERVE_DEVICE"] == "cpu"
    assert _config(gpu)["TAPESERVE_DEVICE"] == "cuda"
    assert _config(gpu)["TAPESERVE_WORKERS"] == "0", "one worker per GPU the pod is given"
    assert gpu_container["image"].endswith("-cuda")
    assert not cpu_container["image"].endswith("-cuda")
    tolerations = gpu_deployment["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    # The patch kept everything it did not name.
    assert gpu_container["livenessProbe"] == cpu_container["livenessProbe"]
    assert gpu_container["volumeMounts"] == cpu_container["volumeMounts"]
