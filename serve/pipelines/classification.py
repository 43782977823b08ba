"""Triton's classification extension: a requested output with `"classification": K` answers
the top K classes as BYTES `"<score>:<index>[:<label>]"` instead of the raw scores.

Written once for every protocol: it turns an output array into the strings array the
encoders then send like any BYTES output (tests/pipelines/triton_answers.json: what Triton
answers, which this reproduces).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serve.lifecycle.config import ModelConfig
from serve.protocol.types import ProtocolError

#: The exporter writes it beside config.json; used when config.json names no label_filename.
DEFAULT_LABELS = "labels.txt"
MAX_ELEMENTS = 1_000_000
_SUPPORTED = "iuf"


def read_labels(path: Path) -> list[str]:
    """Line i is the label of class i (an empty line: no label)."""
    return path.read_text(encoding="utf-8").splitlines()


def output_labels(model_dir: Path, config: ModelConfig, outputs: list[str]) -> dict[str, list[str]]:
    """Labels per output: each output's `label_filename`, else labels.txt for every output.

    A named file that is missing raises FileNotFoundError (the model cannot load).
    """
    named = config.label_files()
    if named:
        return {name: read_labels(model_dir / file) for name, file in named.items()}
    default = model_dir / DEFAULT_LABELS
    if default.is_file():
        labels = read_labels(default)
        return {name: labels for name in outputs}
    return {}


def _text(value: np.generic) -> str:
    """std::to_string, as Triton formats: floats with six decimals, integers as they are."""
    return f"{value:f}" if isinstance(value, np.floating) else str(int(value))


def classify(array: np.ndarray, k: int, labels: list[str] | None, batched: bool) -> np.ndarray:
    """The top `k` of each batch row (of the whole tensor when not `batched`), as bytes."""
    if array.dtype.kind not in _SUPPORTED or array.dtype.itemsize < 4 and array.dtype.kind == "f":
        raise ProtocolError(
            400,
            "class result not available for output due to unsupported type "
            f"{array.dtype.name}; classification needs integer, FP32 or FP64 scores",
        )
    if array.size > MAX_ELEMENTS:
        raise ProtocolError(400, "classification output tensor too large")
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim else array.reshape(1, -1)
    count = min(k, rows.shape[1])
    out = np.empty((rows.shape[0], count), dtype=object)
    for r, row in enumerate(rows):
        top = np.argsort(-row.astype(np.float64), kind="stable")[:count]
        for c, index in enumerate(top):
            text = f"{_text(row[index])}:{index}"
            if labels and index < len(labels) and labels[index]:
                text += f":{labels[index]}"
            out[r, c] = text.encode()
    return out if batched and array.ndim else out.reshape(count)
