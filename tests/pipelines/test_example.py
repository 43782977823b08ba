"""The worked example of examples/pipelines end to end: PNG and JPEG files made here from
held-out digits, sent as BYTES (V2 JSON with base64, the binary extension, tritonclient), answered
with the top 3 labels by the ensemble of the Python preprocessing model and the digits CNN."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from PIL import Image

from engine.datasets import load_digits
from tests.support.server import RunningServer, start_server

EXAMPLE = Path(__file__).parents[2] / "examples" / "pipelines" / "models"


@pytest.fixture(scope="module")
def example_server() -> RunningServer:
    server = start_server(EXAMPLE, extra_args=["--allow-python-models"])
    yield server
    server.stop()


def _image(pixels: np.ndarray, size: int, mode: str, paper: bool, fmt: str) -> bytes:
    """An 8x8 digit in [0, 1] drawn at `size` px, grey or colour, light-on-dark or ink-on-paper."""
    grey = (pixels if not paper else 1.0 - pixels) * 255
    image = Image.fromarray(grey.astype(np.uint8), "L").resize((size, size), Image.NEAREST)
    if mode == "RGB":
        image = Image.merge("RGB", [image, image, image])
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


VARIANTS = [(32, "L", False, "PNG"), (40, "RGB", True, "PNG"), (64, "L", True, "JPEG"),
            (24, "RGB", False, "PNG")]  # fmt: skip


@pytest.fixture(scope="module")
def images() -> list[tuple[bytes, int]]:
    digits = load_digits(images=True)
    return [
        (_image(digits.x_test[i, 0], *VARIANTS[i % len(VARIANTS)]), int(digits.y_test[i]))
        for i in range(40)
    ]


def _top(label_strings: list) -> list[int]:
    return [int(s.split(":")[1]) for s in label_strings]


def test_json_base64_png_answers_top3_labels(example_server, images) -> None:
    hits = 0
    for data, label in images:
        doc = {
            "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1, 1],
                        "data": [base64.b64encode(data).decode()]}],
            "outputs": [{"name": "SCORES", "parameters": {"classification": 3}}],
        }  # fmt: skip
        r = requests.post(f"{example_server.url}/v2/models/digits_pipeline/infer", json=doc,
                          timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["datatype"] == "BYTES" and out["shape"] == [1, 3]
        score, index, name = out["data"][0].split(":")
        assert name == index
        hits += int(index) == label
    assert hits >= 0.9 * len(images), f"{hits}/{len(images)} correct"


def test_binary_extension_batch_of_images(example_server, images) -> None:
    """Eight images in one request (shape [8, 1]) with tritonclient's binary tensors."""
    client = httpclient.InferenceServerClient(example_server.url.removeprefix("http://"))
    batch = np.array([[data] for data, _ in images[:8]], dtype=np.object_)
    inp = httpclient.InferInput("IMAGE", list(batch.shape), "BYTES")
    inp.set_data_from_numpy(batch, binary_data=True)
    out = httpclient.InferRequestedOutput("SCORES", binary_data=True, class_count=3)
    top = client.infer("digits_pipeline", [inp], outputs=[out]).as_numpy("SCORES")
    assert top.shape == (8, 3)
    predicted = [int(row[0].decode().split(":")[1]) for row in top]
    assert sum(p == label for p, (_, label) in zip(predicted, images[:8], strict=True)) >= 7


def test_a_file_that_is_not_an_image_is_400(example_server) -> None:
    doc = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1, 1],
                       "data": ["not an image"]}]}  # fmt: skip
    r = requests.post(f"{example_server.url}/v2/models/digits_pipeline/infer", json=doc, timeout=30)
    assert r.status_code == 400
    assert (
        "in ensemble 'digits_pipeline', step 0:digits_preprocess failed: IMAGE is not a "
        "readable image" in r.json()["error"]
    )
