"""The wire protocols of the server as pure functions: bytes and headers in, typed objects out.

No Flask and no onnxruntime here, so every codec is tested without a server. Every malformed
input raises `ProtocolError(status, message)`; views answer `{"error": message}` with `status`.

Modules: `types` (the contract), `datatypes` (V2 <-> numpy <-> ONNX), `v2` and `binary` (Open
Inference Protocol JSON and the binary tensor extension), `tfserving` (TF Serving REST),
`encoding` (gzip/deflate bodies), `validate` (a request against the model's tensor specs).
"""

from serve.protocol.types import (
    InferInput,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    TensorSpec,
)

__all__ = ["InferInput", "InferRequest", "ProtocolError", "RequestedOutput", "TensorSpec"]
