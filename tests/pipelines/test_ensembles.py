"""Ensembles on a real server: results, metadata, readiness, errors naming the failing step,
load-time refusals with reasons, batching at every step, a step reloaded under load."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import time

import numpy as np
import requests

from serve.core.inference import InferenceCore
from serve.lifecycle.control import ControlSettings, ModelController
from serve.lifecycle.registry import ModelRegistry, State
from serve.settings import Settings
from tests.pipelines import probes
from tests.pipelines.conftest import TRITON, onnx_ensemble
from tests.serve import builders
from tests.support.server import RunningServer

AB = [probes.fp32("A", [probes.A]), probes.fp32("B", [probes.B])]


def test_two_and_three_steps_answer_as_triton(pipelines_server: RunningServer) -> None:
    url = pipelines_server.url
    for name in ("ens_two", "ens_three"):
        ours = probes.infer(url, name, AB)
        theirs = TRITON[f"{name} infer"]
        assert ours["status"] == theirs["status"] == 200
        by_name = {o["name"]: o for o in ours["body"]["outputs"]}
        assert by_name == {o["name"]: o for o in theirs["body"]["outputs"]}


def test_metadata_and_readiness(pipelines_server: RunningServer) -> None:
    meta = pipelines_server.get("/v2/models/ens_two").json()
    assert meta == TRITON["ens_two metadata"]["body"]
    assert pipelines_server.get("/v2/models/ens_two/ready").json()["ready"] is True
    config = pipelines_server.get("/v2/models/ens_two/config").json()
    assert config["platform"] == "ensemble"
    assert config["config"]["ensemble_scheduling"]["step"][0]["model_name"] == "add_sub"
    page = pipelines_server.get("/")
    assert page.status_code == 200 and "ens_two" in page.text and "ens_cycle" in page.text
    stats = pipelines_server.get("/v2/models/ens_two/stats")
    assert stats.status_code == 200 and stats.json()["model_stats"][0]["name"] == "ens_two"


def test_a_failing_step_fails_the_request_naming_the_step(pipelines_server) -> None:
    url = pipelines_server.url
    raised = probes.infer(url, "ens_fail", [probes.fp32("A", [[1, 0, 0, 0]]),
                                            probes.fp32("B", [[0, 0, 0, 0]])])  # fmt: skip
    assert raised["status"] == TRITON["ens_fail step raises"]["status"] == 500
    assert raised["body"]["error"].startswith("in ensemble 'ens_fail', step 1:raiser failed: ")
    assert "ValueError: X[0] == 1 is not allowed" in raised["body"]["error"]
    refused = probes.infer(url, "ens_fail", [probes.fp32("A", [[2, 0, 0, 0]]),
                                             probes.fp32("B", [[0, 0, 0, 0]])])  # fmt: skip
    assert refused["status"] == TRITON["ens_fail step error response"]["status"] == 400
    assert refused["body"]["error"] == (
        "in ensemble 'ens_fail', step 1:raiser failed: X[0] == 2 is refused"
    )
    assert probes.infer(url, "ens_two", AB)["status"] == 200  # nothing else is affected


def test_invalid_ensembles_are_refused_at_load_with_reasons(pipelines_server) -> None:
    rows = {r["name"]: r for r in pipelines_server.post("/v2/repository/index").json()}
    reasons = {name: rows[name]["reason"] for name in
               ("ens_unknown", "ens_unmapped", "ens_mistyped", "ens_cycle")}  # fmt: skip
    assert all(rows[name]["state"] == "UNAVAILABLE" for name in reasons)
    assert reasons["ens_unknown"] == (
        "ensemble ens_unknown contains models that are not available: no_such_model"
    )
    assert reasons["ens_unmapped"] == (
        "in ensemble ens_unmapped, input INPUT1 in model add_sub is not mapped to any ensemble "
        "tensors"
    )
    assert "ensemble tensor A: inconsistent data type: TYPE_INT32" in reasons["ens_mistyped"]
    assert "can never run" in reasons["ens_cycle"] and "loop" in reasons["ens_cycle"]
    triton = TRITON["load"]
    assert "not available or ambiguous: no_such_model" in triton["ens_unknown"]["body"]["error"]
    assert "input INPUT1 in model add_sub is not mapped" in triton["ens_unmapped"]["body"]["error"]
    assert "inconsistent data type: TYPE_INT32" in triton["ens_mistyped"]["body"]["error"]


def _count(metrics: str, family: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(family + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_concurrent_requests_batch_at_every_step(pipelines_server: RunningServer) -> None:
    url = pipelines_server.url
    before = pipelines_server.metrics()
    a = np.random.default_rng(0).random((1, 16), dtype=np.float32).tolist()
    doc = {"inputs": [probes.fp32("a", a), probes.fp32("b", a)]}

    def call(_):
        return requests.post(f"{url}/v2/models/onnx_pair/infer", json=doc, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        assert set(pool.map(call, range(400))) == {200}
    after = pipelines_server.metrics()
    for step in ("am", "mlp"):
        samples = _count(after, "tapeserve_inference_samples_total", model=step) - _count(
            before, "tapeserve_inference_samples_total", model=step
        )
        batches = _count(after, "tapeserve_inference_batches_total", model=step) - _count(
            before, "tapeserve_inference_batches_total", model=step
        )
        assert samples == 400
        assert batches < samples, f"step {step}: {batches} batches for {samples} requests"
    steps = _count(after, "tapeserve_ensemble_step_duration_seconds_count", ensemble="onnx_pair")
    assert steps >= 800
    ensemble = _count(after, "tapeserve_requests_total", model="onnx_pair", code="200")
    assert ensemble >= 400
    per_step = _count(after, "tapeserve_requests_total", model="mlp", protocol="inprocess")
    assert per_step >= 400


def test_step_reloaded_under_load_with_zero_failed_requests(tapeserve_server, tmp_path) -> None:
    onnx_ensemble(tmp_path)
    poll = ["--model-control-mode", "poll", "--poll-interval", "0.2"]
    server = tapeserve_server(tmp_path, workers=1, extra_args=poll)
    url = server.url
    a = np.ones((1, 16), dtype=np.float32).tolist()
    doc = {"inputs": [probes.fp32("a", a), probes.fp32("b", a)]}
    stop = time.monotonic() + 60
    statuses: list[int] = []

    def load() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                r = session.post(f"{url}/v2/models/onnx_pair/infer", json=doc, timeout=30)
                statuses.append(r.status_code)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(load) for _ in range(4)]
        time.sleep(1)
        staged = tmp_path / ".mlp-2"
        shutil.copytree(tmp_path / "mlp" / "1", staged)
        staged.rename(tmp_path / "mlp" / "2")  # version 2 of the second step appears
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = server.post("/v2/repository/index").json()
            if any(r["name"] == "mlp" and r.get("version") == "2" and r["state"] == "READY"
                   for r in rows):  # fmt: skip
                break
            time.sleep(0.2)
        served_by_2 = 0
        while time.monotonic() < deadline and not served_by_2:
            served_by_2 = _count(server.metrics(), "tapeserve_requests_total", model="mlp",
                                 version="2", protocol="inprocess")  # fmt: skip
            time.sleep(0.2)
        time.sleep(1)
        stop = time.monotonic()
        for w in workers:
            w.result()
    assert served_by_2 > 0, "the ensemble never used version 2 of its step"
    assert len(statuses) > 50 and set(statuses) == {200}, sorted(set(statuses))
    assert re.search(r"model mlp now serves version\(s\) \[2\]", server.log())
    assert json.loads(requests.get(f"{url}/v2/models/onnx_pair/ready", timeout=5).text)["ready"]


def test_tf_serving_predict_runs_ensembles_and_python_models(pipelines_server) -> None:
    doc = {"instances": [{"A": probes.A, "B": probes.B}]}
    r = pipelines_server.post("/v1/models/ens_two:predict", json=doc)
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [[3.0, 5.0, 7.0, 9.0]]}
    r = pipelines_server.post("/v1/models/double:predict", json={"instances": [probes.A]})
    assert r.json() == {"predictions": [[2.0, 4.0, 6.0, 8.0]]}


def test_gthread_workers_run_ensembles_in_request_threads(tapeserve_server, tmp_path) -> None:
    """--worker-class gthread: the steps run one after the other in the request's thread
    (Ensemble.infer) instead of on the event loop; the same answers."""
    from tests.pipelines.conftest import build_repository

    server = tapeserve_server(
        build_repository(tmp_path),
        extra_args=["--allow-python-models", "--worker-class", "gthread"],
    )
    for name in ("ens_two", "ens_three"):
        ours = probes.infer(server.url, name, AB)
        theirs = TRITON[f"{name} infer"]
        assert {o["name"]: o for o in ours["body"]["outputs"]} == {
            o["name"]: o for o in theirs["body"]["outputs"]
        }
    refused = probes.infer(server.url, "ens_fail", [probes.fp32("A", [[2, 0, 0, 0]]),
                                                    probes.fp32("B", [[0, 0, 0, 0]])])  # fmt: skip
    assert refused["status"] == 400 and "step 1:raiser failed" in refused["body"]["error"]
    name = {"name": "MODEL_NAME", "datatype": "BYTES", "shape": [1, 1], "data": ["add_sub"]}
    inputs = [probes.fp32("INPUT0", [probes.A]), probes.fp32("INPUT1", [probes.B]), name]
    bls = probes.infer(server.url, "bls", inputs)
    assert bls == TRITON["bls add_sub"]
    doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [4], "data": probes.A}],
           "parameters": PARAMETERS}  # fmt: skip
    echoed = server.post("/v2/models/ens_param/infer", json=doc)
    assert json.loads(echoed.json()["outputs"][0]["data"][0]) == PARAMETERS, echoed.text


def test_independent_steps_run_together_and_a_failing_one_answers(pipelines_server) -> None:
    """Two steps that need each other's nothing form one wave (run at once on the event loop);
    when one fails the request fails with that step, and the other's answer is dropped."""
    url = pipelines_server.url
    ok = probes.infer(url, "ens_parallel", [probes.fp32("A", [probes.A]),
                                            probes.fp32("B", [[3, 0, 0, 0]])])  # fmt: skip
    assert ok["status"] == 200, ok
    assert {o["name"]: o["data"] for o in ok["body"]["outputs"]} == {
        "A2": [2, 4, 6, 8], "B2": [6, 0, 0, 0]}  # fmt: skip
    failed = probes.infer(url, "ens_parallel", [probes.fp32("A", [probes.A]),
                                                probes.fp32("B", [[2, 0, 0, 0]])])  # fmt: skip
    assert failed["status"] == 400
    assert failed["body"]["error"] == (
        "in ensemble 'ens_parallel', step 1:raiser failed: X[0] == 2 is refused"
    )


PARAMETERS = {"flag": True, "greeting": "hi", "n": 3}


def _echoed(answer: np.ndarray) -> dict:
    return json.loads(answer.reshape(-1)[0])


def test_request_parameters_reach_the_steps_over_every_protocol(pipelines_server) -> None:
    """As Triton does, an ensemble forwards its request's parameters to every step (here a
    Python model answering `request.parameters()`); the protocol's own (`timeout`,
    `binary_data_output`) are not the model's."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.array(probes.A, dtype=np.float32)
    for model in ("ens_param", "param_echo"):
        doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [4], "data": probes.A}],
               "parameters": {**PARAMETERS, "timeout": 10_000_000}}  # fmt: skip
        r = pipelines_server.post(f"/v2/models/{model}/infer", json=doc)
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["outputs"][0]["data"][0]) == PARAMETERS, model

        with httpclient.InferenceServerClient(pipelines_server.url[len("http://") :]) as http:
            inp = httpclient.InferInput("X", [4], "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            out = httpclient.InferRequestedOutput("P", binary_data=True)
            got = http.infer(model, [inp], outputs=[out], parameters=PARAMETERS)
            assert _echoed(got.as_numpy("P")) == PARAMETERS, model

        with grpcclient.InferenceServerClient(pipelines_server.grpc_url) as grpc:
            inp = grpcclient.InferInput("X", [4], "FP32")
            inp.set_data_from_numpy(x)
            got = grpc.infer(model, [inp], parameters=PARAMETERS)
            assert _echoed(got.as_numpy("P")) == PARAMETERS, model

    plain = probes.infer(pipelines_server.url, "ens_param", [
        {"name": "X", "datatype": "FP32", "shape": [4], "data": probes.A}])  # fmt: skip
    assert json.loads(plain["body"]["outputs"][0]["data"][0]) == {}


def test_poll_mode_loads_an_ensemble_once_its_missing_step_appears(tmp_path) -> None:
    """An ensemble seen before its step model is UNAVAILABLE; the scan after the step is loaded
    tries it again (its own files did not change) and it serves."""
    onnx_ensemble(tmp_path)
    shutil.rmtree(tmp_path / "mlp")  # the second step is not there yet
    registry = ModelRegistry(tmp_path, "cpu", 1)
    registry.in_process = InferenceCore(registry, Settings(model_repository=str(tmp_path)))
    registry.start()
    assert registry.wait_loaded(60)
    controller = ModelController(registry, ControlSettings(mode="poll", probe=False))
    controller.poll_once()
    pair = registry.models["onnx_pair"].versions[1]
    assert pair.state is State.UNAVAILABLE and "not available: mlp" in pair.reason
    builders.write_model(tmp_path, "mlp", builders.mlp((16, 32, 8)), config={"max_batch_size": 64})
    controller.poll_once()  # sees mlp's files
    controller.poll_once()  # mlp's files settled: loaded, then the ensemble is tried again
    assert registry.models["mlp"].versions[1].state is State.READY
    pair = registry.models["onnx_pair"].versions[1]
    assert pair.state is State.READY, pair.reason
    feeds = {"a": np.ones((1, 16), np.float32), "b": np.ones((1, 16), np.float32)}
    assert registry.in_process.infer("onnx_pair", feeds)["scores"].shape == (1, 8)
    controller.poll_once()  # nothing changed: the ensemble is not loaded again
    assert registry.models["onnx_pair"].versions[1] is pair
