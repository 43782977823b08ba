"""Open Inference Protocol against a real Gunicorn server, with a client nobody here wrote."""

from __future__ import annotations

import gzip
import json

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.http as httpclient

from tests.serve import builders


@pytest.fixture(scope="module")
def client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=4)


def direct(repository, name: str, feeds: dict, version: int = 1) -> list:
    session = ort.InferenceSession(
        str(repository / name / str(version) / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def test_health_and_server_metadata(client, server) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()  # broken models do not block readiness without strict mode
    meta = client.get_server_metadata()
    assert meta["name"] == "tapeserve" and "binary_tensor_data" in meta["extensions"]
    assert server.get("/v2/health/live").json() == {"live": True}


def test_model_metadata_and_readiness(client) -> None:
    meta = client.get_model_metadata("mlp")
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 8]}]
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("broken")


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_infer_matches_onnxruntime(client, repository, binary_in, binary_out) -> None:
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    tensor = httpclient.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary_in)
    result = client.infer(
        "mlp",
        [tensor],
        outputs=[httpclient.InferRequestedOutput("y", binary_data=binary_out)],
        request_id="req-7",
    )
    np.testing.assert_allclose(
        result.as_numpy("y"), direct(repository, "mlp", {"x": x})[0], rtol=1e-5, atol=1e-6
    )
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == "1"


def test_output_selection_and_versions(client, repository) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 3, np.float32)
    inputs = []
    for name, value in (("a", a), ("b", b)):
        tensor = httpclient.InferInput(name, [2, 4], "FP32")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    result = client.infer("addmul", inputs, outputs=[httpclient.InferRequestedOutput("product")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["product"]
    np.testing.assert_array_equal(result.as_numpy("product"), a * b)
    assert result.as_numpy("sum") is None
    # explicit versions of a model served with version_policy all
    v2 = client.infer("versions", inputs, model_version="2")
    np.testing.assert_array_equal(v2.as_numpy("sum"), a + b)
    assert client.get_model_metadata("versions")["versions"] == ["1", "2"]


def test_compression_both_ways(client, server) -> None:
    x = np.ones((3, 16), np.float32)
    tensor = httpclient.InferInput("x", [3, 16], "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "mlp",
            [tensor],
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        assert result.as_numpy("y").shape == (3, 8)
    data = [i + 0.5 for i in range(180)]  # large enough that the response is worth compressing
    body = {"inputs": [{"name": "x", "shape": [60, 3], "datatype": "FP32", "data": data}]}
    response = server.post(
        "/v2/models/id_fp32/infer",
        data=gzip.compress(json.dumps(body).encode()),
        headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Encoding"] == "gzip"  # requests inflated it for us
    assert response.json()["outputs"][0]["data"] == data


def test_raw_binary_body(server, repository) -> None:
    """Inference-Header-Content-Length: 0: the body is the single input, outputs come binary."""
    x = np.arange(16, dtype=np.float32)
    response = server.post(
        "/v2/models/mlp/infer",
        data=x.tobytes(),
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert response.status_code == 200, response.text
    header_length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.content[:header_length])
    out = np.frombuffer(response.content[header_length:], np.float32).reshape(1, 8)
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 32
    np.testing.assert_allclose(
        out, direct(repository, "mlp", {"x": x.reshape(1, 16)})[0], rtol=1e-5
    )


def test_nested_data_and_nonfinite_floats(server) -> None:
    body = {
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32",
             "data": [[1, float("nan"), 3], [float("inf"), float("-inf"), 0]]}
        ]
    }  # fmt: skip
    response = server.post("/v2/models/id_fp32/infer", data=json.dumps(body))
    assert response.status_code == 200, response.text
    assert "NaN" in response.text and "-Infinity" in response.text
    data = json.loads(response.text)["outputs"][0]["data"]
    assert np.isnan(data[1]) and data[3] == float("inf") and data[0] == 1


def test_config_shows_effective_config_and_provider(server) -> None:
    config = server.get("/v2/models/mlp/config").json()
    assert config["max_batch_size"] == 32
    assert config["provider"] == "CPUExecutionProvider" and config["device"] == "cpu"
    assert config["config"]["max_queue_delay_ms"] == 0.0
    assert config["versions"][0]["state"] == "READY"
    unbatched = server.get("/v2/models/fixed/config").json()
    assert unbatched["max_batch_size"] == 0 and unbatched["dynamic_batching"] is None


def test_model_repository_index(server) -> None:
    rows = {(r["name"], r.get("version")): r for r in server.post("/v2/repository/index").json()}
    assert rows[("mlp", "1")]["state"] == "READY"
    assert rows[("broken", "1")]["state"] == "UNAVAILABLE"
    assert rows[("badconfig", None)]["state"] == "UNAVAILABLE"
    ready_only = server.post("/v2/repository/index", json={"ready": True}).json()
    assert ready_only and {r["state"] for r in ready_only} == {"READY"}
    assert server.post("/v2/repository/index", data=b"[1]").status_code == 400


def test_status_page(server) -> None:
    response = server.get("/")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert "mlp" in page and "READY" in page and "CPUExecutionProvider" in page
    assert "UNAVAILABLE" in page and "max_batch_size must be an integer" in page
    assert "http://" not in page and "https://" not in page  # no external assets


def test_openapi_document(server) -> None:
    response = server.get("/openapi.json")
    assert response.status_code == 200, response.text
    from openapi_spec_validator import validate

    validate(response.json())
    assert "/v2/models/{model_name}/infer" in json.dumps(response.json()["paths"]) or any(
        "infer" in path for path in response.json()["paths"]
    )


def test_plain_requests_client(server) -> None:
    """A client with no tritonclient magic: plain requests and JSON."""
    body = {"id": "x1", "inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                     "data": list(range(16))}]}  # fmt: skip
    response = requests.post(f"{server.url}/v2/models/mlp/versions/1/infer", json=body, timeout=10)
    assert response.status_code == 200
    assert response.json()["id"] == "x1"


def test_builders_mlp_is_deterministic() -> None:
    assert builders.mlp((4, 3)).SerializeToString() == builders.mlp((4, 3)).SerializeToString()


def test_inference_statistics(client) -> None:
    """tritonclient's get_inference_statistics, from the counters of every worker."""

    def stats() -> dict:
        (row,) = client.get_inference_statistics("addmul")["model_stats"]
        return row

    before = stats()
    inputs = []
    for name in ("a", "b"):
        tensor = httpclient.InferInput(name, [2, 4], "FP32")
        tensor.set_data_from_numpy(np.ones((2, 4), np.float32))
        inputs.append(tensor)
    for _ in range(3):
        client.infer("addmul", inputs)
    after = stats()
    assert after["name"] == "addmul" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 6  # rows
    assert (
        after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
        == 3
    )
    assert after["execution_count"] > before["execution_count"]
    assert after["inference_stats"]["compute_infer"]["ns"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert {"mlp", "addmul"} <= {row["name"] for row in everything}
