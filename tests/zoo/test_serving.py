"""Every zoo member served by a real Gunicorn server and asked through V2 JSON, V2 binary
(tritonclient) and TF Serving REST: each answer equals onnxruntime run directly on the file and
the framework that made the model. Data-dependent outputs are never split across requests."""

from __future__ import annotations

import concurrent.futures
import json
import shutil

import numpy as np
import pytest

from modelzoo import MEMBERS
from modelzoo.model import run_onnxruntime
from serve.protocol.datatypes import V2_TO_NUMPY, datatype_of
from tests.support.server import start_server
from tests.support.system import require_module


@pytest.fixture(scope="module")
def zoo_server(zoo, tmp_path_factory):
    """One server (2 workers) over every small member, plus the NonZero model configured as a
    new user would (max_batch_size 16) and once insisting on batching."""
    repo = tmp_path_factory.mktemp("zoo-serving")
    members = {}
    for name in MEMBERS:
        members[name] = zoo(name)
        shutil.copytree(members[name].directory, repo / name)
    for folder, config in (
        ("nonzero_batched", {"max_batch_size": 16}),
        ("nonzero_required", {"max_batch_size": 16, "require_batching": True}),
    ):
        shutil.copytree(members["nonzero"].directory, repo / folder)
        (repo / folder / "config.json").write_text(json.dumps(config))
    server = start_server(repo, workers=2, timeout=180)
    try:
        yield server, members
    finally:
        server.stop()


def _expected(member, feeds):
    return run_onnxruntime(member.path, feeds), member.reference(feeds)


def _check(member, feeds, got):
    direct, framework = _expected(member, feeds)
    member.check(direct, got)
    member.check(framework, got)


def _json_value(arr: np.ndarray) -> list:
    if arr.dtype == object:
        return [v.decode() if isinstance(v, bytes) else v for v in arr.ravel()]
    return arr.ravel().tolist()


def _v2_json(server, name, feeds):
    body = {
        "inputs": [
            {"name": k, "shape": list(v.shape), "datatype": datatype_of(v.dtype),
             "data": _json_value(v)}
            for k, v in feeds.items()
        ]
    }  # fmt: skip
    response = server.post(f"/v2/models/{name}/infer", json=body)
    assert response.status_code == 200, response.text
    return {
        out["name"]: np.asarray(out["data"], V2_TO_NUMPY[out["datatype"]]).reshape(out["shape"])
        for out in response.json()["outputs"]
    }


def _v2_binary(server, name, feeds, outputs):
    httpclient = require_module("tritonclient.http")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        items = []
        for key, value in feeds.items():
            item = httpclient.InferInput(key, list(value.shape), datatype_of(value.dtype))
            item.set_data_from_numpy(value, binary_data=True)
            items.append(item)
        wanted = [httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs]
        result = client.infer(name, items, outputs=wanted)
        return {o: result.as_numpy(o) for o in outputs}
    finally:
        client.close()


def _nested(arr: np.ndarray):
    """A tensor as nested JSON lists (strings decoded)."""
    flat = np.empty(arr.size, dtype=object if arr.dtype == object else arr.dtype)
    flat[:] = _json_value(arr)
    return flat.reshape(arr.shape).tolist()


def _tf_columnar(server, name, feeds, outputs):
    body = {"inputs": {k: _nested(v) for k, v in feeds.items()}}
    response = server.post(f"/v1/models/{name}:predict", json=body)
    assert response.status_code == 200, response.text
    doc = response.json()["outputs"]
    return {outputs[0]: doc} if len(outputs) == 1 else doc


@pytest.mark.parametrize("name", list(MEMBERS))
@pytest.mark.parametrize("protocol", ["v2-json", "v2-binary", "tf-columnar"])
def test_answers_equal_onnxruntime_and_the_framework(zoo_server, name, protocol):
    server, members = zoo_server
    member = members[name]
    feeds = member.inputs(batch=3, seed=7)
    if protocol == "v2-json":
        got = _v2_json(server, name, feeds)
    elif protocol == "v2-binary":
        got = _v2_binary(server, name, feeds, member.outputs)
    else:
        raw = _tf_columnar(server, name, feeds, member.outputs)
        direct = run_onnxruntime(member.path, feeds)
        got = {k: np.asarray(v, dtype=direct[k].dtype) for k, v in raw.items()}
    assert sorted(got) == sorted(member.outputs)
    _check(member, feeds, got)


@pytest.mark.parametrize("name", ["resnet50", "bert_optimized", "sklearn_pipeline", "xgboost"])
def test_tf_row_format_answers_each_instance(zoo_server, name):
    server, members = zoo_server
    member = members[name]
    feeds = member.inputs(batch=2, seed=3)
    rows = [{k: _nested(v[i]) for k, v in feeds.items()} for i in range(2)]
    if len(feeds) == 1:
        rows = [next(iter(r.values())) for r in rows]
    response = server.post(f"/v1/models/{name}:predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    direct = run_onnxruntime(member.path, feeds)
    if len(member.outputs) == 1:
        predictions = [{member.outputs[0]: p} for p in predictions]
    got = {o: np.asarray([p[o] for p in predictions], direct[o].dtype) for o in member.outputs}
    _check(member, feeds, got)


def test_row_format_is_refused_where_rows_depend_on_the_data(zoo_server):
    server, members = zoo_server
    feeds = members["detector"].inputs(batch=2, seed=1)
    rows = [{k: v[i].tolist() for k, v in feeds.items()} for i in range(2)]
    response = server.post("/v1/models/detector:predict", json={"instances": rows})
    assert response.status_code == 400
    assert "columnar" in response.json()["error"]


def test_zipmap_outputs_are_served_as_probability_tensors_with_their_labels(zoo_server):
    server, _ = zoo_server
    for name, output in (("sklearn_pipeline", "output_probability"), ("lightgbm", "probabilities")):
        meta = server.get(f"/v2/models/{name}").json()
        spec = {o["name"]: o for o in meta["outputs"]}[output]
        assert spec["datatype"] == "FP32" and spec["shape"] == [-1, 3]
        config = server.get(f"/v2/models/{name}/config").json()
        assert {o["name"]: o for o in config["output"]}[output]["labels"] == ["0", "1", "2"]
        assert config["max_batch_size"] == 64  # ZipMap gone: rows follow the batch


def test_a_model_importing_unused_domains_loads(zoo_server):
    """onnxruntime's transformer optimizer imports ai.onnx.preview, com.microsoft.experimental,
    org.pytorch.aten, ... that no node uses: judged by operators, the model serves."""
    server, _ = zoo_server
    assert server.get("/v2/models/bert_optimized/ready").status_code == 200


def test_data_dependent_outputs_turn_batching_off(zoo_server):
    server, _ = zoo_server
    for name in ("detector", "nonzero", "nonzero_batched"):
        assert server.get(f"/v2/models/{name}/config").json()["max_batch_size"] == 0, name
    assert "'indices', 'values' do not carry the batch dimension" in server.log()
    for name in ("resnet50", "bert", "lightgbm", "xgboost"):
        assert server.get(f"/v2/models/{name}/config").json()["max_batch_size"] > 0, name
    # LightGBM's exporter declares its label output as [1]; it follows the batch
    labels = {o["name"]: o for o in server.get("/v2/models/lightgbm").json()["outputs"]}
    assert labels["label"]["shape"] == [-1]


def test_require_batching_refuses_a_model_whose_outputs_do_not_follow_the_batch(zoo_server):
    server, _ = zoo_server
    rows = {r["name"]: r for r in server.post("/v2/repository/index").json()}
    assert rows["nonzero_required"]["state"] == "UNAVAILABLE"
    assert "require_batching" in rows["nonzero_required"]["reason"]
    assert "'indices', 'values'" in rows["nonzero_required"]["reason"]


def test_concurrent_single_requests_each_get_their_own_answer(zoo_server):
    """The bug this guards: NonZero/GatherND, max_batch_size 16, 64 concurrent single requests;
    batched and split by rows, a batch whose selection had as many rows as requests answered
    each request with another's rows (status 200)."""
    server, members = zoo_server
    member = members["nonzero"]
    feeds = [member.inputs(batch=1, seed=seed) for seed in range(64)]
    expected = [run_onnxruntime(member.path, f) for f in feeds]

    def ask(i):
        return _v2_json(server, "nonzero_batched", feeds[i])

    for _round in range(3):
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            answers = list(pool.map(ask, range(64)))
        for i, (want, got) in enumerate(zip(expected, answers, strict=True)):
            for output in ("indices", "values"):
                np.testing.assert_array_equal(got[output], want[output], err_msg=f"request {i}")


def test_each_member_takes_the_path_its_datatypes_allow(zoo_server):
    """FP16 travels as FP16, strings as BYTES, token ids as INT64."""
    server, _ = zoo_server
    types = {
        name: {i["name"]: i["datatype"] for i in server.get(f"/v2/models/{name}").json()["inputs"]}
        for name in ("resnet50_fp16", "sklearn_pipeline", "bert")
    }
    assert types["resnet50_fp16"] == {"input": "FP16"}
    assert types["sklearn_pipeline"]["c0"] == "BYTES" and types["sklearn_pipeline"]["n0"] == "FP32"
    assert set(types["bert"].values()) == {"INT64"}
