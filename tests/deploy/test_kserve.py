"""deploy/kserve/inferenceservice.yaml (REST) and inferenceservice-grpc.yaml (gRPC, h2c): what
KServe requires of a custom predictor."""

from __future__ import annotations

import pytest

from serve.settings import ENV_PREFIX, Settings
from tests.deploy.manifests import DEPLOY, KUBERNETES_VERSIONS, load_yaml, validate

#: Predictor fields that KServe copies onto the pod spec (the rest are KServe's own).
KSERVE_ONLY = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containers"}


@pytest.fixture(scope="module")
def service() -> dict:
    return load_yaml(DEPLOY / "kserve" / "inferenceservice.yaml")


def test_resource_identity(service):
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    assert service["kind"] == "InferenceService"
    assert service["metadata"]["name"]
    predictor = service["spec"]["predictor"]
    assert "model" not in predictor, "a custom predictor is given by containers, not a model"
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"]


def test_container_speaks_v2_on_the_routed_port(service):
    (container,) = service["spec"]["predictor"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (port,) = container["ports"]
    assert int(env["TAPESERVE_PORT"]) == port["containerPort"] == 8080
    assert env["TAPESERVE_HOST"] == "0.0.0.0"
    # KServe's storage initializer puts STORAGE_URI's content in /mnt/models.
    assert env["STORAGE_URI"] and env["TAPESERVE_MODEL_REPOSITORY"] == "/mnt/models"
    settings = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert set(settings) <= {ENV_PREFIX + f.upper() for f in Settings.__dataclass_fields__}
    Settings.from_env(settings)
    for probe, path in [
        ("startupProbe", "/v2/health/ready"),
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ]:
        assert container[probe]["httpGet"] == {"path": path, "port": port["containerPort"]}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_predictor_is_a_valid_pod_spec(service, version):
    """KServe builds the pod from the predictor: as a Pod it must pass the Kubernetes schema."""
    predictor = service["spec"]["predictor"]
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_ONLY}
    pod_spec["containers"] = predictor["containers"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod_spec}
    validate(pod, version)


@pytest.fixture(scope="module")
def grpc_service() -> dict:
    return load_yaml(DEPLOY / "kserve" / "inferenceservice-grpc.yaml")


def test_grpc_predictor_is_routed_as_h2c_and_probed_over_grpc(grpc_service):
    (container,) = grpc_service["spec"]["predictor"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    (port,) = container["ports"]
    assert port["name"] == "h2c", "KServe routes HTTP/2 (gRPC) to a port named h2c"
    assert int(env["TAPESERVE_GRPC_PORT"]) == port["containerPort"]
    assert int(env["TAPESERVE_PORT"]) != port["containerPort"]
    Settings.from_env({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
    assert container["readinessProbe"]["grpc"] == {
        "port": port["containerPort"],
        "service": "readiness",
    }
    assert container["livenessProbe"]["grpc"] == {
        "port": port["containerPort"],
        "service": "liveness",
    }


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_grpc_predictor_is_a_valid_pod_spec(grpc_service, version):
    test_predictor_is_a_valid_pod_spec(grpc_service, version)
