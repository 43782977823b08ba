"""The HTTP inference protocols as codecs of the core: V2 (JSON, binary, raw) and TF Serving.

A codec turns an `HttpBody` into the core's `Request` for a model version (decompressing,
decoding and validating through serve/protocol/) and the core's outputs into the answer's body
and headers. The Flask views and the event-loop fast path use the same two objects, so both
answer byte for byte alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve.core.errors import Failure
from serve.core.inference import Call, Output, Request
from serve.lifecycle.registry import ModelVersion
from serve.protocol import tfserving, v2
from serve.protocol.encoding import decode_body, encode_body
from serve.protocol.types import InferRequest, ProtocolError
from serve.protocol.validate import validate_request


@dataclass(slots=True)
class HttpBody:
    """A request body as it arrived (bounded by --max-body-size), with the headers codecs read."""

    data: bytes
    content_encoding: str | None = None
    accept_encoding: str | None = None
    #: Inference-Header-Content-Length (the binary tensor extension).
    header_length: str | None = None
    #: --max-body-size, which also bounds the body after decompression.
    limit: int = 0


class V2Codec:
    """Open Inference Protocol REST: JSON, the binary tensor extension, a raw body; answers are
    compressed as Accept-Encoding allows."""

    protocol = "v2"

    def decode(self, mv: ModelVersion, body: HttpBody) -> Request:
        data = decode_body(body.data, body.content_encoding, body.limit)
        raw_spec = mv.inputs[0] if len(mv.inputs) == 1 else None
        req = v2.decode_infer(data, body.header_length, raw_input=raw_spec)
        validate_request(req, mv.inputs, mv.outputs, mv.max_batch_size)
        feeds = {i.name: i.data for i in req.inputs}
        return Request(feeds, req.outputs, req.parameters, req.id, req)

    def encode(
        self, mv: ModelVersion, request: Request, outputs: list[Output], body: HttpBody
    ) -> tuple[bytes, dict[str, str]]:
        req: InferRequest = request.state
        chosen = [
            (name, arr, req.binary_output if asked is None else asked.binary)
            for name, arr, asked in outputs
        ]
        answer, headers = v2.encode_infer(mv.name, str(mv.version), req.id, chosen)
        answer, coding = encode_body(answer, body.accept_encoding)
        if coding:
            headers["Content-Encoding"] = coding
            headers["Vary"] = "Accept-Encoding"
        return answer, headers


class TFServingCodec:
    """TensorFlow Serving REST `:predict`, row (`instances`) or columnar (`inputs`) format."""

    protocol = "tfserving"

    def decode(self, mv: ModelVersion, body: HttpBody) -> Request:
        data = decode_body(body.data, body.content_encoding, body.limit)
        req = tfserving.decode_predict(data, mv.inputs, max_batch_size=mv.max_batch_size)
        return Request(req.inputs, state=req)

    def encode(
        self, mv: ModelVersion, request: Request, outputs: list[Output], body: HttpBody
    ) -> tuple[bytes, dict[str, str]]:
        arrays = {name: arr for name, arr, _ in outputs}
        answer = tfserving.encode_predict(arrays, request.state.row_format, request.state.instances)
        return answer, {"Content-Type": "application/json"}


V2 = V2Codec()
TFSERVING = TFServingCodec()


def check_body_size(size: int, limit: int, declared: bool = False) -> None:
    """413 when a body (`declared` by Content-Length, or as read so far) exceeds `limit`."""
    if size > limit:
        if declared:
            raise ProtocolError(413, f"request body of {size} bytes exceeds the {limit}-byte limit")
        raise ProtocolError(413, f"request body exceeds the {limit}-byte limit")


def http_answer(call: Call) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of a finished inference call."""
    if call.failure is None:
        return 200, call.headers, call.body  # type: ignore[return-value]
    return error_answer(call.failure)


def error_answer(failure: Failure) -> tuple[int, dict[str, str], bytes]:
    """`{"error": message}` with the failure's status and headers (Retry-After, ...)."""
    headers = {"Content-Type": "application/json"}
    if failure.headers:
        headers.update(failure.headers)
    return failure.status, headers, v2.error_body(failure.message)
