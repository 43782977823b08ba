"""The RPCs other than ModelInfer answer what the REST endpoints of the same name answer."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from tritonclient.utils import InferenceServerException

from serve.grpc.servicer import SERVICE


def test_health_and_server_metadata(client, server) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta == server.get("/v2").json()


@pytest.mark.parametrize("name", ["mlp", "addmul", "versions", "id_bytes", "id_fp16"])
def test_model_metadata_as_over_rest(client, server, name) -> None:
    meta = client.get_model_metadata(name, as_json=True)
    rest = server.get(f"/v2/models/{name}").json()
    assert meta["name"] == rest["name"] and meta["platform"] == rest["platform"]
    assert meta["versions"] == rest["versions"]
    for key in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[key]] == [
            (t["name"], t["datatype"], t["shape"]) for t in rest[key]
        ]


def test_model_readiness(client) -> None:
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("versions", "1") and client.is_model_ready("versions", "2")
    assert not client.is_model_ready("broken")
    with pytest.raises(InferenceServerException) as unknown:
        client.is_model_ready("nope")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


def test_model_config_is_tritons_message(client, server) -> None:
    config = client.get_model_config("mlp").config
    rest = server.get("/v2/models/mlp/config").json()
    assert (config.name, config.platform, config.backend) == ("mlp", "onnxruntime_onnx",
                                                              "onnxruntime")  # fmt: skip
    assert config.max_batch_size == rest["max_batch_size"] == 32
    # Triton writes dims without the batch dimension of a batching model.
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [("x", 11, [16])]
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 1024
    assert config.instance_group[0].count == 1 and config.version_policy.latest.num_versions == 1
    assert config.parameters["provider"].string_value == "CPUExecutionProvider"
    fixed = client.get_model_config("nobatch").config
    assert fixed.max_batch_size == 0 and list(fixed.input[0].dims) == [-1, 16]
    assert not fixed.HasField("dynamic_batching")
    assert client.get_model_config("versions").config.version_policy.HasField("all")


def test_statistics_and_repository_index(client, server) -> None:
    tensor = {"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}
    server.post("/v2/models/mlp/infer", json={"inputs": [tensor]})
    stats = client.get_inference_statistics("mlp", as_json=True)["model_stats"]
    rest = server.get("/v2/models/mlp/stats").json()["model_stats"]
    assert [s["name"] for s in stats] == [s["name"] for s in rest] == ["mlp"]
    assert int(stats[0]["inference_stats"]["success"]["count"]) >= 1
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in every} >= {"mlp", "addmul", "versions"}
    index = client.get_model_repository_index(as_json=True)["models"]
    rest_index = server.post("/v2/repository/index").json()
    assert sorted((m["name"], m.get("version", ""), m["state"]) for m in index) == sorted(
        (m["name"], m.get("version", ""), m["state"]) for m in rest_index
    )
    ready = server.post("/v2/repository/index", json={"ready": True}).json()
    assert len(client.get_model_repository_index(as_json=True)["models"]) > len(ready)


def test_shared_memory_and_trace_are_unimplemented_with_a_reason(client) -> None:
    with pytest.raises(InferenceServerException) as shm:
        client.get_system_shared_memory_status()
    assert shm.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "shared memory is not supported" in shm.value.message()


def test_standard_health_service_for_probes(server) -> None:
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        (health_pb2.HealthCheckResponse.NOT_SERVING),
    )
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def check(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service)).status

        for service in ("", "readiness", "liveness", SERVICE, "mlp"):
            assert check(service) == serving, service
        assert check("broken") == not_serving
        with pytest.raises(grpc.RpcError) as unknown:
            check("nope")
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service="mlp"), timeout=5)
        assert next(watch).status == serving
        watch.cancel()


def test_reflection_lists_and_describes_the_services(server) -> None:
    """What grpcurl does: list the services, then describe one from the server alone."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE, "grpc.health.v1.Health"} <= services
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(database)
        service = pool.FindServiceByName(SERVICE)
        methods = {m.name for m in service.methods}
        assert {"ModelInfer", "ModelStreamInfer", "RepositoryModelLoad", "ModelConfig"} <= methods
        request = pool.FindMessageTypeByName("inference.ModelInferRequest")
        assert "raw_input_contents" in request.fields_by_name
