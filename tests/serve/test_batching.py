"""Dynamic batching through the real server: fewer batches than requests, exact splits, no
added latency for a lone request."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient


def metric(text: str, name: str, model: str) -> float:
    prefix = f'{name}{{model="{model}",version="1"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def counts(server, model: str) -> tuple[float, float]:
    text = server.metrics()
    return (
        metric(text, "tapeserve_inference_batches_total", model),
        metric(text, "tapeserve_inference_samples_total", model),
    )


def test_concurrent_requests_share_batches_and_split_exactly(server, repository) -> None:
    session = ort.InferenceSession(
        str(repository / "delayed" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=(i % 3 + 1, 16)).astype(np.float32) for i in range(16)]
    batches_before, samples_before = counts(server, "delayed")
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(inputs))

    def send(i: int) -> None:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        tensor = httpclient.InferInput("x", list(inputs[i].shape), "FP32")
        tensor.set_data_from_numpy(inputs[i])
        start.wait()
        results[i] = client.infer("delayed", [tensor]).as_numpy("y")

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(inputs):  # each answer is exactly the model run on that request alone
        np.testing.assert_allclose(results[i], session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    batches_after, samples_after = counts(server, "delayed")
    assert samples_after - samples_before == sum(x.shape[0] for x in inputs)
    assert 1 <= batches_after - batches_before < len(inputs)


def test_lone_request_runs_alone_at_once(server) -> None:
    """An idle batcher (max_queue_delay_ms 0) runs a lone request as a batch of 1 right away."""
    body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [1.0] * 16}]}
    server.post("/v2/models/mlp/infer", json=body)  # connection and caches warm
    batches_before, samples_before = counts(server, "mlp")
    response = server.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 200
    assert counts(server, "mlp") == (batches_before + 1, samples_before + 1)
    text = server.metrics()
    queue_sum = metric(text, "tapeserve_queue_duration_seconds_sum", "mlp")
    queue_count = metric(text, "tapeserve_queue_duration_seconds_count", "mlp")
    assert queue_count >= 2 and queue_sum / queue_count < 0.25  # no fixed wait in the queue


def test_unbatched_models_take_requests_as_given(server) -> None:
    """max_batch_size 0 and a fixed first dimension: inputs run as sent, batch dim not special."""
    config = server.get("/v2/models/nobatch/config").json()
    assert config["max_batch_size"] == 0
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1] * 6}]}
    fixed = server.post("/v2/models/fixed/infer", json=body)
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["outputs"][0]["shape"] == [2, 3]
    big = {"inputs": [{"name": "x", "shape": [100, 16], "datatype": "FP32", "data": [0] * 1600}]}
    assert server.post("/v2/models/nobatch/infer", json=big).status_code == 200
