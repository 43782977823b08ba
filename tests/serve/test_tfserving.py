"""TensorFlow Serving REST against the real server, as a plain JSON client sends it."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort


def _direct(repository, name, feeds):
    path = repository / name / "1" / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_status_and_metadata(server) -> None:
    status = server.get("/v1/models/mlp").json()
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert server.get("/v1/models/mlp/versions/1").json() == status
    broken = server.get("/v1/models/broken").json()["model_version_status"][0]
    assert broken["state"] == "END" and broken["status"]["error_message"]
    meta = server.get("/v1/models/mlp/metadata").json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert server.get("/v1/models/mlp/versions/1/metadata").status_code == 200


def test_predict_instances_and_inputs(server, repository) -> None:
    x = np.random.default_rng(1).normal(size=(3, 16)).astype(np.float32)
    expected = _direct(repository, "mlp", {"x": x})[0]
    rows = server.post("/v1/models/mlp:predict", json={"instances": x.tolist()})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(rows.json()["predictions"], expected, rtol=1e-5, atol=1e-6)
    cols = server.post("/v1/models/mlp/versions/1:predict", json={"inputs": x.tolist()})
    assert cols.status_code == 200, cols.text
    np.testing.assert_allclose(cols.json()["outputs"], expected, rtol=1e-5, atol=1e-6)


def test_predict_named_inputs(server) -> None:
    a = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    b = [[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]]
    rows = server.post(
        "/v1/models/addmul:predict",
        json={"instances": [{"a": a[0], "b": b[0]}, {"a": a[1], "b": b[1]}]},
    ).json()["predictions"]
    assert rows[1] == {"sum": [7.0, 8.0, 9.0, 10.0], "product": [10.0, 12.0, 14.0, 16.0]}
    cols = server.post("/v1/models/addmul:predict", json={"inputs": {"a": a, "b": b}}).json()
    assert cols["outputs"]["sum"] == (np.array(a) + np.array(b)).tolist()


def test_predict_errors(server) -> None:
    both = server.post("/v1/models/mlp:predict", json={"instances": [[0] * 16], "inputs": [[0]]})
    assert both.status_code == 400 and "not both" in both.json()["error"]
    shape = server.post("/v1/models/mlp:predict", json={"instances": [[0] * 15]})
    assert shape.status_code == 400 and "16" in shape.json()["error"]
    assert server.post("/v1/models/nope:predict", json={"instances": [1]}).status_code == 404
    wrong_method = server.get("/v1/models/mlp:predict")
    assert wrong_method.status_code == 405 and "POST" in wrong_method.json()["error"]
    assert server.post("/v1/models/mlp:classify", json={}).status_code == 501


def test_access_log_names_an_unknown_model_of_a_predict_request(server) -> None:
    response = server.post("/v1/models/nosuch:predict", json={"instances": [[0]]})
    assert response.status_code == 404
    assert _access_entry(server, response)["model"] == "nosuch"
    response = server.post("/v1/models/nosuch/versions/7:predict", json={"instances": [[0]]})
    entry = _access_entry(server, response)
    assert (entry["model"], entry["version"]) == ("nosuch", "7")


def _access_entry(server, response) -> dict:
    marker = f'"request_id":"{response.headers["X-Request-ID"]}"'
    return next(json.loads(line) for line in server.log().splitlines() if marker in line)
