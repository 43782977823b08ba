"""Every row of the REST error table through gRPC: the status derived from the same code, the
same message (serve/core/errors.py), and the request counted as REST counts it."""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.serve.test_errors import _busy_body, _metric, _occupy, _wait_metric

X = np.zeros((1, 16), np.float32)


def _tensor(name: str, x: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _grpc_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def _rest_error(server, model: str, body: dict, version: str | None = None) -> tuple[int, str]:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    response = server.post(path, data=json.dumps(body))
    return response.status_code, response.json()["error"]


def _rest_body(x: np.ndarray, datatype: str, name: str = "x", **extra) -> dict:
    data = x.ravel().tolist() if datatype != "BYTES" else [v.decode() for v in x.ravel()]
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                        "data": data}], **extra}  # fmt: skip


CASES = {
    # case: (model, grpc inputs, rest body, version, outputs, grpc status)
    "wrong shape": ("mlp", [("x", np.zeros((1, 15), np.float32), "FP32")], None, None, None,
                    "INVALID_ARGUMENT"),
    "wrong datatype": ("mlp", [("x", np.zeros((1, 16), np.int32), "INT32")], None, None, None,
                       "INVALID_ARGUMENT"),
    "unknown input": ("mlp", [("z", X, "FP32")], None, None, None, "INVALID_ARGUMENT"),
    "missing input": ("addmul", [("a", np.zeros((1, 4), np.float32), "FP32")], None, None, None,
                      "INVALID_ARGUMENT"),
    "unknown output": ("mlp", [("x", X, "FP32")], None, None, ["nope"], "INVALID_ARGUMENT"),
    "batch too large": ("mlp", [("x", np.zeros((100, 16), np.float32), "FP32")], None, None,
                        None, "INVALID_ARGUMENT"),
    "out of range in onnxruntime": ("lookup", [("i", np.array([7]), "INT64")], None, None,
                                    None, "INVALID_ARGUMENT"),
    "unknown model": ("nope", [("x", X, "FP32")], None, None, None, "NOT_FOUND"),
    "unknown version": ("mlp", [("x", X, "FP32")], None, "9", None, "NOT_FOUND"),
    "bad model name": ("a..b", [("x", X, "FP32")], None, None, None, "INVALID_ARGUMENT"),
    "unavailable model": ("broken", [("x", X, "FP32")], None, None, None, "UNAVAILABLE"),
    "bad config": ("badconfig", [("x", X, "FP32")], None, None, None, "UNAVAILABLE"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_error_rows_as_over_rest(client, server, case) -> None:
    model, inputs, _, version, outputs, status = CASES[case]
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs] if outputs else None
    error = _grpc_error(
        lambda: client.infer(
            model,
            [_tensor(*i) for i in inputs],
            model_version=version or "",
            outputs=requested,
        )
    )
    body = {"inputs": [_rest_body(x, d, n)["inputs"][0] for n, x, d in inputs]}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    rest_status, rest_message = _rest_error(server, model, body, version)
    assert error.status() == f"StatusCode.{status}"
    assert error.message() == rest_message
    assert {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404, "UNAVAILABLE": 503}[status] == rest_status


def test_bad_timeout_parameter(server) -> None:
    """tritonclient refuses to send a `timeout` that is not an int; a generated client can."""
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(X.tobytes())
    request.parameters["timeout"].string_param = "soon"
    with grpc.insecure_channel(server.grpc_url) as channel, pytest.raises(grpc.RpcError) as info:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    body = _rest_body(X, "FP32", parameters={"timeout": "soon"})
    status, message = _rest_error(server, "mlp", body)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and status == 400
    assert info.value.details() == message


def test_queue_full_is_unavailable_with_retry_after(client, server) -> None:
    busy = _occupy(server, "busy")
    queued = threading.Thread(
        target=server.post, args=("/v2/models/busy/infer",), kwargs={"json": _busy_body(1)}
    )
    queued.start()
    _wait_metric(server, 'tapeserve_queue_depth{model="busy",version="1"}', 1)
    n = np.array([1])
    error = _grpc_error(lambda: client.infer("busy", [_tensor("n", n, "INT64")]))
    busy.join()
    queued.join()
    assert error.status() == "StatusCode.UNAVAILABLE"
    assert "queue" in error.message() and "full" in error.message()
    counted = 'tapeserve_requests_total{code="503",model="busy",protocol="grpc",version="1"}'
    assert _metric(server, counted) >= 1


def test_deadlines_are_deadline_exceeded_and_leave_the_queue(client, server) -> None:
    n = np.array([1])
    rejected = 'tapeserve_rejected_requests_total{model="busy",reason="deadline"}'
    # the request's timeout parameter (microseconds), as over REST
    busy = _occupy(server, "busy")
    error = _grpc_error(lambda: client.infer("busy", [_tensor("n", n, "INT64")], timeout=1000))
    busy.join()
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED" and "deadline" in error.message()
    # the gRPC deadline of the call: the request is dropped from the queue, never run
    before = _metric(server, rejected)
    runs = 'tapeserve_inference_batches_total{model="busy",version="1"}'
    busy = _occupy_long(server, "busy")
    ran = _metric(server, runs)
    error = _grpc_error(
        lambda: client.infer("busy", [_tensor("n", n, "INT64")], client_timeout=0.2)
    )
    busy.join()
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    _wait_metric(server, rejected, before + 1)
    time.sleep(0.2)
    assert _metric(server, runs) == ran + 1, "only the occupying request ran"
    assert _metric(server, 'tapeserve_queue_depth{model="busy",version="1"}') == 0


def _occupy_long(server, model: str) -> threading.Thread:
    """`_occupy` for a second or more: longer than the gRPC deadline of the test."""
    started = f'tapeserve_queue_duration_seconds_count{{model="{model}",version="1"}}'
    before = _metric(server, started)
    body = _busy_body(150_000, timeout=60_000_000)
    thread = threading.Thread(target=server.post, args=(f"/v2/models/{model}/infer",),
                              kwargs={"json": body, "timeout": 60})  # fmt: skip
    thread.start()
    _wait_metric(server, started, before + 1)
    return thread


def test_message_size_limit_is_max_body_size(tapeserve_server, small_repository) -> None:
    srv = tapeserve_server(small_repository, extra_args=["--max-body-size", "2000"])
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        big = np.zeros((20, 16), np.float32)  # 1,280 bytes of tensor: fits
        assert client.infer("mlp", [_tensor("x", big, "FP32")]).as_numpy("y").shape == (20, 8)
        bigger = np.zeros((32, 16), np.float32)  # 2,048 bytes: over
        error = _grpc_error(lambda: client.infer("mlp", [_tensor("x", bigger, "FP32")]))
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "larger than max" in error.message()


def test_inference_token_over_grpc(tapeserve_server, small_repository) -> None:
    srv = tapeserve_server(small_repository, env={"TAPESERVE_INFERENCE_TOKEN": "s3cret"})
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        missing = _grpc_error(lambda: client.infer("mlp", [_tensor("x", X, "FP32")]))
        wrong = _grpc_error(
            lambda: client.infer(
                "mlp", [_tensor("x", X, "FP32")], headers={"authorization": "Bearer nope"}
            )
        )
        ok = client.infer(
            "mlp", [_tensor("x", X, "FP32")], headers={"authorization": "Bearer s3cret"}
        )
        assert client.is_model_ready("mlp"), "metadata needs no token, as over REST"
    assert missing.status() == "StatusCode.UNAUTHENTICATED"
    assert missing.message() == srv.post("/v2/models/mlp/infer", json={}).json()["error"]
    assert wrong.status() == "StatusCode.PERMISSION_DENIED"
    assert ok.as_numpy("y").shape == (1, 8)
