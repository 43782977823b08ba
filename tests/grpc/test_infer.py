"""ModelInfer through real tritonclient.grpc clients (sync and asyncio): every datatype, raw and
typed contents, requested outputs, versions, classification, streams; answers equal to
onnxruntime and to the REST answers."""

from __future__ import annotations

import asyncio
import queue

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from serve.grpc.codec import CONTENTS_FIELD
from tests.serve.conftest import DATATYPES
from tests.serve.test_datatypes import sample


def _input(module, name: str, x: np.ndarray, datatype: str):
    tensor = module.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _bytes_equal(out: np.ndarray, x: np.ndarray) -> None:
    assert [v if isinstance(v, bytes) else v.encode() for v in out.ravel()] == list(x.ravel())


@pytest.mark.parametrize("datatype", DATATYPES)
def test_every_datatype_round_trips_raw_as_over_rest(client, rest, datatype) -> None:
    x = sample(datatype)
    model = f"id_{datatype.lower()}"
    result = client.infer(model, [_input(grpcclient, "x", x, datatype)], request_id="r7")
    out = result.as_numpy("y")
    answer = result.get_response()
    assert answer.id == "r7" and answer.model_name == model and answer.model_version == "1"
    assert answer.outputs[0].datatype == datatype and list(answer.outputs[0].shape) == [2, 3]
    assert len(answer.raw_output_contents) == 1 and not answer.outputs[0].HasField("contents")
    over_rest = rest.infer(model, [_input(httpclient, "x", x, datatype)]).as_numpy("y")
    if datatype == "BYTES":
        _bytes_equal(out, x)
        _bytes_equal(over_rest, x)
    else:
        assert out.dtype == x.dtype == over_rest.dtype
        np.testing.assert_array_equal(out, x)
        np.testing.assert_array_equal(out, over_rest)


def _typed_request(model: str, x: np.ndarray, datatype: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=x.shape)
    values = x.ravel().tolist()
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(values)
    return request


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d in CONTENTS_FIELD])
def test_typed_contents_of_every_datatype(server, datatype) -> None:
    """A client generated from the proto (not tritonclient) sending typed `contents`: the
    answer comes back in raw_output_contents, as Triton's does."""
    x = sample(datatype)
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(_typed_request(f"id_{datatype.lower()}", x, datatype))
    assert answer.outputs[0].datatype == datatype
    raw = answer.raw_output_contents[0]
    if datatype == "BYTES":
        assert raw == serialize_byte_tensor(x).item()
    else:
        np.testing.assert_array_equal(np.frombuffer(raw, x.dtype).reshape(x.shape), x)


def test_fp16_has_no_typed_field_and_mixing_is_refused(server) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="id_fp16")
        request.inputs.add(name="x", datatype="FP16", shape=[1, 3])
        with pytest.raises(grpc.RpcError) as fp16:
            stub.ModelInfer(request)
        assert fp16.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16 has no typed contents field" in fp16.value.details()
        mixed = _typed_request("id_fp32", np.ones((1, 3), np.float32), "FP32")
        mixed.raw_input_contents.append(np.ones((1, 3), np.float32).tobytes())
        with pytest.raises(grpc.RpcError) as both:
            stub.ModelInfer(mixed)
        assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "contents field must not be specified" in both.value.details()
        short = service_pb2.ModelInferRequest(model_name="id_fp32")
        short.inputs.add(name="x", datatype="FP32", shape=[1, 3])
        short.raw_input_contents.append(b"\0" * 8)
        with pytest.raises(grpc.RpcError) as size:
            stub.ModelInfer(short)
        assert "raw contents are 8 bytes" in size.value.details()


def test_mlp_answers_what_onnxruntime_and_rest_answer(client, rest, grpc_repository) -> None:
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    session = ort.InferenceSession(str(grpc_repository / "mlp" / "1" / "model.onnx"))
    expected = session.run(None, {"x": x})[0]
    over_grpc = client.infer("mlp", [_input(grpcclient, "x", x, "FP32")]).as_numpy("y")
    over_rest = rest.infer("mlp", [_input(httpclient, "x", x, "FP32")]).as_numpy("y")
    np.testing.assert_allclose(over_grpc, expected, rtol=1e-6)
    np.testing.assert_array_equal(over_grpc, over_rest)


def test_requested_outputs_and_versions(client) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    inputs = [_input(grpcclient, "a", a, "FP32"), _input(grpcclient, "b", a, "FP32")]
    result = client.infer("addmul", inputs, outputs=[grpcclient.InferRequestedOutput("product")])
    assert [o.name for o in result.get_response().outputs] == ["product"]
    np.testing.assert_array_equal(result.as_numpy("product"), a * a)
    v2 = client.infer("versions", inputs, model_version="2")
    assert v2.get_response().model_version == "2"
    np.testing.assert_array_equal(v2.as_numpy("sum"), a + a)
    x = np.ones((1, 3), np.float32)
    v1 = client.infer("versions", [_input(grpcclient, "x", x, "FP32")], model_version="1")
    np.testing.assert_array_equal(v1.as_numpy("y"), x)


def test_classification_extension_as_over_rest(client, rest) -> None:
    x = np.random.default_rng(1).normal(size=(2, 16)).astype(np.float32)
    over_grpc = client.infer(
        "mlp",
        [_input(grpcclient, "x", x, "FP32")],
        outputs=[grpcclient.InferRequestedOutput("y", class_count=3)],
    ).as_numpy("y")
    over_rest = rest.infer(
        "mlp",
        [_input(httpclient, "x", x, "FP32")],
        outputs=[httpclient.InferRequestedOutput("y", class_count=3)],
    ).as_numpy("y")
    assert over_grpc.shape == (2, 3)
    assert over_grpc.tolist() == over_rest.tolist()


def test_asyncio_client_every_rpc_and_concurrent_calls(server, client) -> None:
    async def main() -> None:
        async with aioclient.InferenceServerClient(server.grpc_url) as aio:
            assert await aio.is_server_live() and await aio.is_server_ready()
            assert await aio.is_model_ready("mlp")
            assert (await aio.get_server_metadata()).name == "tapeserve"
            meta = await aio.get_model_metadata("mlp", as_json=True)
            assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "16"]}]
            config = await aio.get_model_config("mlp", as_json=True)
            assert config["config"]["max_batch_size"] == 32
            index = await aio.get_model_repository_index(as_json=True)
            assert {"name": "mlp", "version": "1", "state": "READY"} in index["models"]
            stats = await aio.get_inference_statistics("mlp", as_json=True)
            assert stats["model_stats"][0]["name"] == "mlp"
            xs = [np.full((1, 16), i, np.float32) for i in range(32)]
            answers = await asyncio.gather(
                *(aio.infer("mlp", [_input(aioclient, "x", x, "FP32")]) for x in xs)
            )
            for x, answer in zip(xs, answers, strict=True):
                single = client.infer("mlp", [_input(grpcclient, "x", x, "FP32")])
                np.testing.assert_array_equal(answer.as_numpy("y"), single.as_numpy("y"))
            for datatype in DATATYPES:
                x = sample(datatype)
                out = (
                    await aio.infer(f"id_{datatype.lower()}", [_input(aioclient, "x", x, datatype)])
                ).as_numpy("y")
                if datatype == "BYTES":
                    _bytes_equal(out, x)
                else:
                    np.testing.assert_array_equal(out, x)

    asyncio.run(main())


def test_stream_answers_in_order_and_an_error_does_not_end_it(client) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(3):
            x = np.full((1, 16), i, np.float32)
            client.async_stream_infer(
                "mlp", [_input(grpcclient, "x", x, "FP32")], request_id=str(i)
            )
            if i == 1:
                bad = np.ones((1, 15), np.float32)
                client.async_stream_infer("mlp", [_input(grpcclient, "x", bad, "FP32")])
        got = [answers.get(timeout=30) for _ in range(4)]
    finally:
        client.stop_stream()
    ids = [r.get_response().id for r, e in got if e is None]
    errors = [e for r, e in got if e is not None]
    assert ids == ["0", "1", "2"]
    assert len(errors) == 1 and "expected shape [-1, 16], got [1, 15]" in errors[0].message()


def test_stream_with_triton_grpc_error_ends_with_the_status(client) -> None:
    answers: queue.Queue = queue.Queue()
    client.start_stream(
        callback=lambda result, error: answers.put((result, error)),
        headers={"triton_grpc_error": "true"},
    )
    try:
        bad = np.ones((1, 15), np.float32)
        client.async_stream_infer("mlp", [_input(grpcclient, "x", bad, "FP32")])
        result, error = answers.get(timeout=30)
    finally:
        client.stop_stream()
    assert result is None and isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"


def test_asyncio_stream(server) -> None:
    async def main() -> list:
        async with aioclient.InferenceServerClient(server.grpc_url) as aio:

            async def requests():
                for i in range(3):
                    x = np.full((1, 16), i, np.float32)
                    yield {
                        "model_name": "mlp",
                        "inputs": [_input(aioclient, "x", x, "FP32")],
                        "request_id": str(i),
                    }

            return [item async for item in aio.stream_infer(requests())]

    answers = asyncio.run(main())
    assert [error for _, error in answers] == [None, None, None]
    assert [result.get_response().id for result, _ in answers] == ["0", "1", "2"]
