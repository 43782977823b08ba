"""`tapeserve bench --protocol grpc`: the closed loop of loadgen/http.py over gRPC.

`concurrency` clients, each with a channel (one HTTP/2 connection) of its own, call ModelInfer
again as soon as the previous answer arrived, on one asyncio loop (grpc.aio). The request is the
V2 ModelInferRequest with its tensors in `raw_input_contents`, serialized once; answers are
parsed only for the check that precedes each level. Inputs come from the model's metadata
(ModelMetadata) or a sample file, as over HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import numpy as np

from loadgen.http import LevelResult, summarize
from serve.grpc.generated import grpc_service_pb2 as pb
from serve.protocol import binary, datatypes

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
#: As tritonclient: no limit of ours on message sizes.
_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def address(url: str) -> str:
    """`host:port` from `grpc://host:port` or `host:port`."""
    return url.split("://", 1)[-1].rstrip("/")


def model_metadata(addr: str, model: str, version: str = "", timeout: float = 30.0) -> dict:
    """The model's metadata as V2 REST writes it (name, versions, inputs, outputs)."""

    async def ask() -> pb.ModelMetadataResponse:
        async with grpc.aio.insecure_channel(addr, options=_OPTIONS) as channel:
            call = channel.unary_unary(
                MODEL_METADATA,
                request_serializer=pb.ModelMetadataRequest.SerializeToString,
                response_deserializer=pb.ModelMetadataResponse.FromString,
            )
            return await call(pb.ModelMetadataRequest(name=model, version=version), timeout=timeout)

    try:
        answer = asyncio.run(ask())
    except grpc.RpcError as exc:
        raise RuntimeError(f"ModelMetadata: {exc.code().name}: {exc.details()}") from None
    tensors = {
        key: [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
            for t in getattr(answer, key)
        ]
        for key in ("inputs", "outputs")
    }
    return {"name": answer.name, "versions": list(answer.versions), **tensors}


def encode_request(model: str, version: str, inputs: dict[str, np.ndarray]) -> bytes:
    """A serialized ModelInferRequest carrying `inputs` raw."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, arr in inputs.items():
        datatype = "BYTES" if arr.dtype == object else datatypes.datatype_of(arr.dtype)
        request.inputs.add(name=name, datatype=datatype, shape=arr.shape)
        request.raw_input_contents.append(bytes(binary.tensor_bytes(arr, datatype)))
    return request.SerializeToString()


def check_answer(answer: bytes, metadata: dict | None) -> None:
    """Raise RuntimeError unless the answer carries every declared output."""
    response = pb.ModelInferResponse.FromString(answer)
    names = {o.name for o in response.outputs}
    if not names or len(response.raw_output_contents) != len(response.outputs):
        raise RuntimeError(f"the answer has no outputs: {response}")
    for spec in (metadata or {}).get("outputs", []):
        if spec["name"] not in names:
            raise RuntimeError(f"the answer lacks output {spec['name']!r}")


def _infer_method(channel: grpc.aio.Channel):
    return channel.unary_unary(
        MODEL_INFER, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )


def one_request(addr: str, request: bytes, timeout: float = 30.0) -> bytes:
    """One ModelInfer; raises RuntimeError with the status when it fails."""

    async def call() -> bytes:
        async with grpc.aio.insecure_channel(addr, options=_OPTIONS) as channel:
            return await _infer_method(channel)(request, timeout=timeout)

    try:
        return asyncio.run(call())
    except grpc.RpcError as exc:
        raise RuntimeError(f"ModelInfer: {exc.code().name}: {exc.details()}") from None


def run_level(
    addr: str,
    request: bytes,
    concurrency: int,
    duration: float,
    warmup: float,
    timeout: float = 30.0,
    tick: Callable[[float, int], None] | None = None,
) -> LevelResult:
    """Drive `concurrency` channels: `warmup` seconds unmeasured, then `duration` measured, and
    until one request is answered (as loadgen.http.run_level)."""
    return asyncio.run(_level(addr, request, concurrency, duration, warmup, timeout, tick))


async def _level(addr, request, concurrency, duration, warmup, timeout, tick) -> LevelResult:
    stop = False
    measuring = False
    latencies: list[float] = []
    errors = [0]
    first_error = [""]
    clock = time.perf_counter

    async def client() -> None:
        async with grpc.aio.insecure_channel(addr, options=_OPTIONS) as channel:
            infer = _infer_method(channel)
            while not stop:
                start = clock()
                try:
                    await infer(request, timeout=timeout)
                    ok, problem = True, ""
                except grpc.RpcError as exc:
                    ok, problem = False, f"{exc.code().name}: {exc.details()}"
                if not measuring:
                    continue
                if ok:
                    latencies.append(clock() - start)
                else:
                    errors[0] += 1
                    first_error[0] = first_error[0] or problem

    tasks = [asyncio.ensure_future(client()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    start = clock()
    while (elapsed := clock() - start) < duration or not (
        latencies or errors[0] or elapsed > duration + timeout
    ):
        await asyncio.sleep(min(0.5, max(0.01, duration - elapsed)))
        if tick is not None:
            tick(min(clock() - start, duration), len(latencies))
    measuring = False
    measured = clock() - start
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return summarize(concurrency, measured, latencies, errors[0], first_error[0])
