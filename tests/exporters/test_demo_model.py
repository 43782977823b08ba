"""The committed demo model (examples/models/digits) is what `make demo-model` produces and
serves the held-out digits at >= 98% accuracy over HTTP."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine import recipes
from engine.datasets import load_digits
from exporters.export import export_model
from exporters.verify import accuracy, run_session, session
from tests.support.system import require_module

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "models" / "digits"
MODEL = DIGITS / "1" / "model.onnx"
RECIPE = "digits-cnn"


def demo_seed() -> int:
    """The seed `make demo-model` trains with."""
    return int(re.search(r"^DEMO_SEED := (\d+)$", (ROOT / "Makefile").read_text(), re.M).group(1))


def metadata() -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(MODEL).metadata_props}


def committed_accuracy() -> float:
    data = load_digits(images=True)
    return accuracy(run_session(session(MODEL.read_bytes()), data.x_test)[0], data.y_test)


def test_committed_model_is_a_checked_digits_classifier_with_its_provenance():
    onnx.checker.check_model(onnx.load(MODEL), full_check=True)
    meta = metadata()
    assert json.loads(meta["labels"]) == [str(d) for d in range(10)]
    assert json.loads(meta["input_shape"]) == ["batch", 1, 8, 8]
    training = json.loads(meta["training"])
    assert training["recipe"] == "digits-cnn"
    # The file is the model the recorded training run evaluated (same held-out accuracy).
    assert committed_accuracy() == pytest.approx(training["test_accuracy"] * 100, abs=0.5)
    assert (DIGITS / "labels.txt").read_text().split() == [str(d) for d in range(10)]
    assert json.loads((DIGITS / "config.json").read_text())["max_batch_size"] >= 1


def test_served_digits_classifier_is_at_least_98_percent_accurate_over_http(
    tmp_path, tapeserve_server
):
    httpclient = require_module("tritonclient.http")
    shutil.copytree(DIGITS, tmp_path / "digits")
    server = tapeserve_server(tmp_path)
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    data = load_digits(images=True)
    max_batch = json.loads((DIGITS / "config.json").read_text())["max_batch_size"]
    predictions = []
    for start in range(0, len(data.x_test), max_batch):
        x = data.x_test[start : start + max_batch]
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer("digits", [inp])
        predictions.append(np.argmax(result.as_numpy("output"), axis=1))
    served = float(np.mean(np.concatenate(predictions) == data.y_test) * 100)
    assert served >= 98.0
    assert served == pytest.approx(committed_accuracy(), abs=1e-9)


def test_committed_model_is_the_current_recipe_as_make_demo_model_trains_it():
    """Cheap staleness check: same recipe, seed and epochs as `make demo-model` would use now,
    and the same graph (ops and weight shapes) as the recipe's model exports to today."""
    training = json.loads(metadata()["training"])
    assert training["recipe"] == RECIPE and training["seed"] == demo_seed()
    assert training["epochs"] == recipes.RECIPES[RECIPE].epochs
    fresh, _ = export_model(recipes.RECIPES[RECIPE].build(), load_digits(images=True).x_test[:3])
    committed = onnx.load(MODEL)

    def shape(proto):
        ops = [n.op_type for n in proto.graph.node]
        return ops, sorted(tuple(t.dims) for t in proto.graph.initializer)

    assert shape(committed) == shape(fresh), "run `make demo-model` and commit the result"


@pytest.mark.timeout(900)  # about 25 s of training on 2 cores; generous for a loaded machine
def test_committed_model_matches_a_fresh_make_demo_model_run():
    """Retrain exactly as `make demo-model` does; held-out accuracy within 0.5 point."""
    fresh = recipes.run(RECIPE, seed=demo_seed(), progress=False)
    assert fresh.test_accuracy * 100 == pytest.approx(committed_accuracy(), abs=0.5)
