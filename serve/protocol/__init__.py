"""The wire protocols of the server as pure functions: bytes and headers in, typed objects out.

No Flask and no onnxruntime here, so every codec is tested without a server. Every malformed
input raises `ProtocolError(status, message)`; views answer `{"error": message}` with `status`.

Modules: `types` (the contract), `datatypes` (V2 <-> numpy <-> ONNX), `v2` and `binary` (Open
Inference Protocol JSON and the binary tensor extension), `tfserving` (TF Serving REST),
`encoding` (gzip/deflate bodies), `validate` (a request against the model's tensor specs),
`jsondata` (JSON parsing/writing and JSON tensor data shared by the codecs).

Additions to the agreed signatures (all backwards compatible):
- `v2.decode_infer(body, header_length, *, raw_input=None)` also takes the header's raw string
  and checks it (`v2.parse_header_length`).
- `tfserving.decode_predict(body, inputs, *, max_batch_size=0)` checks names, shapes and the
  batch limit itself; `PredictRequest.inputs` is ready to run.
- `datatypes.datatype_of` / `datatype_from_onnx` raise ValueError (not ProtocolError) for types
  the protocol cannot carry: they describe models, not requests.
- `jsondata.dumps(obj, *, finite=False)` accepts numpy arrays; `finite=True` allows orjson.
"""

from serve.protocol.types import (
    InferInput,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    TensorSpec,
)

__all__ = ["InferInput", "InferRequest", "ProtocolError", "RequestedOutput", "TensorSpec"]
