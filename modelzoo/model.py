"""What a built zoo member is: where it lies, how to feed it, and what its framework answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

#: onnxruntime 1.31 reads IR versions up to 13; onnx 1.23 stamps 14 unless told otherwise.
MAX_IR_VERSION = 13

Feeds = dict[str, np.ndarray]


@dataclass
class ZooModel:
    """A member written into a model repository.

    `inputs(batch, seed)` makes feeds with `batch` rows (the model's real input distribution:
    images, token ids with padding, categorical strings, boxes); `reference(feeds)` is what the
    framework that made the model answers, by output name, in the form the server serves it
    (sequence-of-map probabilities as a [N, classes] array in class order). `max_error[output]`
    bounds `error(expected, got)`: 0 means equal; floats compare relative to the largest
    expected magnitude, so fp16 and int8 variants can be held to what their precision allows.
    `batched` says whether every output follows the batch dimension of the inputs (False for
    outputs whose rows depend on the data).
    """

    name: str
    framework: str
    directory: Path
    inputs: Callable[..., Feeds]
    reference: Callable[[Feeds], Feeds]
    outputs: list[str]
    batched: bool = True
    max_error: dict[str, float] = field(default_factory=dict)
    config: dict | None = None
    notes: str = ""

    @property
    def path(self) -> Path:
        return self.directory / "1" / "model.onnx"

    def tolerance(self, output: str) -> float:
        return self.max_error.get(output, 1e-5)

    def check(self, expected: Feeds, got: Feeds) -> None:
        """Raise AssertionError naming the output when `got` does not agree with `expected`."""
        missing = sorted(set(expected) - set(got))
        assert not missing, f"{self.name}: outputs {missing} missing from the answer"
        for name, want in expected.items():
            err = error(want, got[name])
            assert err <= self.tolerance(name), (
                f"{self.name}: output {name!r} differs by {err:.3g} "
                f"(allowed {self.tolerance(name):.3g}); want {np.ravel(want)[:4]}, "
                f"got {np.ravel(got[name])[:4]}"
            )


def error(expected: np.ndarray, got: np.ndarray) -> float:
    """0.0 when equal; max |got - expected| / max |expected| for floats; inf on a shape or
    (for non-floats) value mismatch."""
    expected, got = np.asarray(expected), np.asarray(got)
    if expected.shape != got.shape:
        return float("inf")
    if expected.dtype.kind not in "fc":
        return 0.0 if np.array_equal(expected, got) else float("inf")
    if expected.size == 0:
        return 0.0
    want = expected.astype(np.float64)
    diff = np.abs(got.astype(np.float64) - want)
    if not np.all(np.isfinite(diff)):
        return float("inf")
    return float(diff.max() / max(float(np.abs(want).max()), 1e-12))


def save(model: onnx.ModelProto, directory: Path, config: dict | None, external: bool = False):
    """Write `directory/1/model.onnx` (external data in `model.onnx.data` when asked) and the
    model's config.json; the IR version is capped at what onnxruntime reads."""
    version = directory / "1"
    version.mkdir(parents=True, exist_ok=True)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.save_model(
        model,
        str(version / "model.onnx"),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config, indent=1))


def run_onnxruntime(path: Path, feeds: Feeds) -> Feeds:
    """onnxruntime run directly on the model file (CPU), outputs by name; a sequence of maps
    (ZipMap) becomes a [N, classes] array with the classes in ascending order."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = {}
    for name, value in zip(names, session.run(None, feeds), strict=True):
        if isinstance(value, list):
            value = np.array([[row[k] for k in sorted(row)] for row in value], np.float32)
        out[name] = value
    return out
