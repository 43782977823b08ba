"""The classification extension on batched and unbatched models, JSON and binary, with labels
from config.json's label_filename and from the exporter's labels.txt."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient

from serve.lifecycle.config import parse_config
from serve.pipelines.classification import classify, output_labels
from serve.protocol.types import ProtocolError
from tests.pipelines.conftest import TRITON
from tests.pipelines.probes import probe_requests
from tests.support.server import RunningServer

PROBES = [
    "classification batched top3",
    "classification int top2",
    "classification k above size",
    "classification and plain",
    "classification unbatched",
]


@pytest.fixture(scope="module")
def answers(pipelines_server: RunningServer) -> dict:
    return probe_requests(pipelines_server.url)


@pytest.mark.parametrize("probe", PROBES)
def test_same_answer_as_triton(answers: dict, probe: str) -> None:
    assert answers[probe] == TRITON[probe]


def test_zero_means_no_classification_as_in_triton(answers: dict) -> None:
    ours, theirs = answers["classification zero"], TRITON["classification zero"]
    assert ours["body"]["outputs"][0]["datatype"] == theirs["body"]["outputs"][0]["datatype"]
    assert np.allclose(ours["body"]["outputs"][0]["data"], theirs["body"]["outputs"][0]["data"])


def test_onnx_model_with_the_exporters_labels_binary(pipelines_server: RunningServer) -> None:
    """The bundled digits CNN: no label_filename in its config, labels.txt beside it."""
    from engine.datasets import load_digits

    digits = load_digits(images=True)
    x = digits.x_test[:4].astype(np.float32)
    client = httpclient.InferenceServerClient(pipelines_server.url.removeprefix("http://"))
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("output", binary_data=True, class_count=3)
    top = client.infer("digits", [inp], outputs=[out]).as_numpy("output")
    assert top.shape == (4, 3)
    for row, label in zip(top, digits.y_test[:4], strict=True):
        score, index, name = row[0].decode().split(":")
        assert int(index) == label and name == str(label)
        assert float(score) >= float(row[1].decode().split(":")[0])


def test_unsupported_type_and_bad_k_are_400(pipelines_server: RunningServer) -> None:
    with pytest.raises(ProtocolError, match="unsupported type"):
        classify(np.zeros((1, 3), np.float16), 2, None, True)
    doc = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}],
           "outputs": [{"name": "SCORES", "parameters": {"classification": -1}}]}  # fmt: skip
    r = pipelines_server.post("/v2/models/scores/infer", json=doc)
    assert r.status_code == 400 and "classification" in r.json()["error"]
    assert "classification" in pipelines_server.get("/v2").json()["extensions"]


def test_labels_come_from_label_filename_then_labels_txt(tmp_path) -> None:
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "mine.txt").write_text("x\ny\n")
    named = parse_config({"output": [{"name": "out", "label_filename": "mine.txt"}]})
    assert output_labels(tmp_path, named, ["out", "other"]) == {"out": ["x", "y"]}
    assert output_labels(tmp_path, parse_config({}), ["out"]) == {"out": ["a", "b"]}
    missing = parse_config({"output": [{"name": "out", "label_filename": "nope.txt"}]})
    with pytest.raises(FileNotFoundError):
        output_labels(tmp_path, missing, ["out"])
