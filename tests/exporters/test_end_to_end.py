"""Train -> `tapeserve export` -> real Gunicorn server -> predictions over HTTP equal the engine's.

The export runs through the click command exactly as users run it; the server is the real
`tapeserve serve` started by the shared fixture on a free loopback port.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner

from engine.datasets import load_digits
from exporters.cli import export
from exporters.trace import run_model


def infer(server, model: str, x: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    response = server.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_train_export_serve_predict_matches_engine(trained_mlp, tmp_path, tapeserve_server):
    result, checkpoint = trained_mlp
    repo = tmp_path / "models"
    run = CliRunner().invoke(
        export,
        [str(checkpoint), "--repository", str(repo), "--name", "mlp", "--max-batch-size", "16"],
    )
    assert run.exit_code == 0, run.output
    assert "dataset samples" in run.output and "wrote" in run.output
    assert json.loads((repo / "mlp" / "config.json").read_text()) == {"max_batch_size": 16}
    assert (repo / "mlp" / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    meta = {p.key: p.value for p in onnx.load(repo / "mlp" / "1" / "model.onnx").metadata_props}
    assert json.loads(meta["labels"]) == [str(d) for d in range(10)]
    assert meta["producer"].startswith("tapeserve ")
    assert len(meta["checkpoint_hash"]) == 64 and "[0, 1]" in meta["input_description"]

    server = tapeserve_server(repo)
    x = load_digits().x_test[:13]
    served = infer(server, "mlp", x)
    expected = run_model(result.model, x)[0]
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)


def test_export_takes_the_next_free_version_and_refuses_a_bad_tolerance(trained_mlp, tmp_path):
    _, checkpoint = trained_mlp
    repo = tmp_path / "models"
    args = [str(checkpoint), "--repository", str(repo), "--name", "mlp"]
    for expected in ("version 1", "version 2"):
        run = CliRunner().invoke(export, args)
        assert run.exit_code == 0 and expected in run.output, run.output
    run = CliRunner().invoke(export, [*args, "--version", "1"])
    assert run.exit_code != 0 and "already exists" in run.output
    run = CliRunner().invoke(export, [*args[:-1], "../escape"])
    assert run.exit_code != 0 and "path separator" in run.output
    assert not (tmp_path / "escape").exists()
    run = CliRunner().invoke(export, [*args, "--rtol", "0"])  # float32 rounding exceeds 0
    assert run.exit_code != 0 and "verification failed" in run.output and "FAIL" in run.output
    assert sorted(p.name for p in (repo / "mlp").iterdir()) == [
        "1",
        "2",
        "config.json",
        "labels.txt",
    ]


def test_int8_quantized_export_reports_accuracy(trained_mlp, tmp_path):
    _, checkpoint = trained_mlp
    run = CliRunner().invoke(
        export,
        [str(checkpoint), "--repository", str(tmp_path), "--name", "q", "--quantize", "int8"],
    )
    assert run.exit_code == 0, run.output
    assert "dynamic int8" in run.output and "accuracy" in run.output and "points" in run.output
    meta = {p.key: p.value for p in onnx.load(tmp_path / "q" / "1" / "model.onnx").metadata_props}
    assert meta["quantization"].startswith("dynamic int8")


def test_checkpoint_without_dataset_exports_with_integer_inputs(tmp_path):
    """A hand-built embedding model: random index inputs verify it, the shape comes from the
    checkpoint or --example-shape."""
    import engine
    import engine.nn as nn
    from engine import checkpoint as engine_checkpoint

    engine.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 3), nn.Flatten(), nn.Linear(15, 2))
    engine_checkpoint.save(tmp_path / "ckpt", model, input_shape=(5,), input_dtype="int64")
    run = CliRunner().invoke(
        export, [str(tmp_path / "ckpt"), "--repository", str(tmp_path / "repo"), "--name", "emb"]
    )
    assert run.exit_code == 0, run.output
    assert "dataset samples" not in run.output
    proto = onnx.load(tmp_path / "repo" / "emb" / "1" / "model.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    run = CliRunner().invoke(
        export,
        [str(tmp_path / "ckpt"), "--repository", str(tmp_path / "repo"), "--name", "emb",
         "--example-shape", "4"],
    )  # fmt: skip
    assert run.exit_code != 0  # Flatten -> Linear(15) cannot take 4 indices: a clear error
    assert "fails on an example input of shape (3, 4)" in run.output
