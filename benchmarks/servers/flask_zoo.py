"""The baseline for real models and big bodies: the Flask + ONNX Runtime app a user would write,
with the fastest JSON library and nothing else.

POST /predict/<model>  {"inputs": {name: nested list, ...}}  ->  {"outputs": {name: nested list}}
Each body is read with `orjson.loads`, each input made with `np.asarray(value, dtype)` (the dtype
from the session's input), `session.run`, the answer written with `orjson.dumps` - no checks.
Sessions are created at import, in each Gunicorn worker after the fork (no --preload); run it
as `gunicorn -k gthread -w 2 --threads 4 flask_zoo:app`. BENCH_MODELS names a folder of
`<model>.onnx` files; ORT_THREADS sets intra-op threads (default: CPUs / workers).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from flask import Flask, Response, request

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(string)": object,
}


def make_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "1"))
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


app = Flask(__name__)
_DIR = Path(os.environ.get("BENCH_MODELS", "."))
SESSIONS = {path.stem: make_session(path) for path in sorted(_DIR.glob("*.onnx"))}
TYPES = {
    name: {i.name: _DTYPES[i.type] for i in session.get_inputs()}
    for name, session in SESSIONS.items()
}


@app.post("/predict/<name>")
def predict(name: str) -> Response:
    session = SESSIONS.get(name)
    if session is None:
        return Response(b'{"error":"unknown model"}', 404, mimetype="application/json")
    inputs = orjson.loads(request.get_data())["inputs"]
    feeds = {key: np.asarray(value, dtype=TYPES[name][key]) for key, value in inputs.items()}
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, feeds), strict=True))
    body = orjson.dumps({"outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, 200, mimetype="application/json")


@app.get("/health")
def health() -> str:
    return "ok"
