"""The baseline: the hand-written Flask + ONNX Runtime app a PyTorch user would write.

POST /predict/<model>  {"inputs": [[...]]}  ->  {"outputs": [[...10 floats]]}
Sessions are created at import, in each Gunicorn worker after the fork (no --preload).
BENCH_MODELS names the folder holding <model>.onnx; ORT_THREADS sets intra-op threads (default 2).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request

SHAPES = {"mlp": (784,), "cnn": (1, 28, 28)}


def make_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", "2"))
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


app = Flask(__name__)
_DIR = Path(os.environ.get("BENCH_MODELS", "."))
SESSIONS = {
    name: make_session(_DIR / f"{name}.onnx") for name in SHAPES if (_DIR / f"{name}.onnx").exists()
}


@app.post("/predict/<name>")
def predict(name: str):
    if name not in SESSIONS:
        return jsonify(error="unknown model"), 404
    x = np.asarray(request.get_json()["inputs"], dtype=np.float32).reshape(-1, *SHAPES[name])
    y = SESSIONS[name].run(None, {"x": x})[0]
    return jsonify(outputs=y.tolist())


@app.get("/health")
def health() -> str:
    return "ok"
