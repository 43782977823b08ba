"""The pipeline tests' model repository: the models of tests/pipelines/models (written as
Triton's Python-backend examples are; tests/pipelines/triton_reference.py runs them on a real
Triton), the bundled digits CNN, a leaking model and a small ONNX ensemble."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve import builders
from tests.support.server import RunningServer, start_server

HERE = Path(__file__).parent
DIGITS = HERE.parents[1] / "examples" / "models" / "digits"
TRITON = json.loads((HERE / "triton_answers.json").read_text())["triton"]

LEAKER = """
import triton_python_backend_utils as pb_utils

KEPT = []


class TritonPythonModel:
    def execute(self, requests):
        KEPT.append(bytearray(256 * 1024 * 1024))  # never freed: 256 MiB more per call
        x = pb_utils.get_input_tensor_by_name(requests[0], "X").as_numpy()
        return [pb_utils.InferenceResponse([pb_utils.Tensor("Y", x)]) for _ in requests]
"""


PARAMETER_ECHO = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            echo = json.dumps(json.loads(request.parameters()), sort_keys=True)
            tensor = pb_utils.Tensor("P", np.array([echo.encode()], dtype=object))
            responses.append(pb_utils.InferenceResponse([tensor]))
        return responses
"""


def parameter_echo(root: Path) -> None:
    """`param_echo`: a Python model answering its request's parameters as JSON, and
    `ens_param`, an ensemble whose one step is that model."""
    (root / "param_echo" / "1").mkdir(parents=True)
    (root / "param_echo" / "1" / "model.py").write_text(PARAMETER_ECHO)
    x = [{"name": "X", "data_type": "TYPE_FP32", "dims": [4]}]
    p = [{"name": "P", "data_type": "TYPE_STRING", "dims": [1]}]
    config = {"backend": "python", "max_batch_size": 0, "input": x, "output": p}
    (root / "param_echo" / "config.json").write_text(json.dumps(config))
    ensemble = {
        "platform": "ensemble", "input": x, "output": p,
        "ensemble_scheduling": {"step": [
            {"model_name": "param_echo", "input_map": {"X": "X"}, "output_map": {"P": "P"}},
        ]},
    }  # fmt: skip
    (root / "ens_param" / "1").mkdir(parents=True)
    (root / "ens_param" / "config.json").write_text(json.dumps(ensemble))


def onnx_ensemble(root: Path) -> None:
    """`onnx_pair`: addmul (ONNX) then mlp (ONNX), the shape of the benchmark's ensemble."""
    builders.write_model(root, "am", builders.add_mul(width=16), config={"max_batch_size": 64})
    builders.write_model(root, "mlp", builders.mlp((16, 32, 8)), config={"max_batch_size": 64})
    ensemble = {
        "platform": "ensemble",
        "max_batch_size": 64,
        "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [16]},
                  {"name": "b", "data_type": "TYPE_FP32", "dims": [16]}],
        "output": [{"name": "scores", "data_type": "TYPE_FP32", "dims": [8]}],
        "ensemble_scheduling": {"step": [
            {"model_name": "am", "input_map": {"a": "a", "b": "b"}, "output_map": {"sum": "s"}},
            {"model_name": "mlp", "input_map": {"x": "s"}, "output_map": {"y": "scores"}},
        ]},
    }  # fmt: skip
    (root / "onnx_pair" / "1").mkdir(parents=True)
    (root / "onnx_pair" / "config.json").write_text(json.dumps(ensemble))


def build_repository(root: Path) -> Path:
    for model in (HERE / "models").iterdir():
        shutil.copytree(model, root / model.name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(DIGITS, root / "digits")
    leaker = root / "leaker"
    (leaker / "1").mkdir(parents=True)
    (leaker / "1" / "model.py").write_text(LEAKER)
    config = json.loads((root / "double" / "config.json").read_text())
    (leaker / "config.json").write_text(json.dumps({**config, "name": "leaker"}))
    for name, first in (("raiser_warm_bad", 1.0), ("raiser_warm_good", 3.0)):
        shutil.copytree(root / "raiser", root / name)
        config = json.loads((root / name / "config.json").read_text())
        config.update(name=name, warmup=[{"X": {"shape": [1, 4], "data": [first, 0, 0, 0]}}])
        (root / name / "config.json").write_text(json.dumps(config))
    parallel = {
        "platform": "ensemble",
        "max_batch_size": 8,
        "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [4]} for n in ("A", "B")],
        "output": [{"name": n, "data_type": "TYPE_FP32", "dims": [4]} for n in ("A2", "B2")],
        "ensemble_scheduling": {"step": [
            {"model_name": "double", "input_map": {"X": "A"}, "output_map": {"Y": "A2"}},
            {"model_name": "raiser", "input_map": {"X": "B"}, "output_map": {"Y": "B2"}},
        ]},
    }  # fmt: skip
    (root / "ens_parallel" / "1").mkdir(parents=True)
    (root / "ens_parallel" / "config.json").write_text(json.dumps(parallel))
    onnx_ensemble(root)
    parameter_echo(root)
    return root


@pytest.fixture(scope="module")
def pipelines_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server (one worker) with --allow-python-models over the whole repository."""
    root = build_repository(tmp_path_factory.mktemp("pipelines"))
    server = start_server(
        root, extra_args=["--allow-python-models", "--python-model-memory-mb", "1024"]
    )
    try:
        yield server
    finally:
        server.stop()
