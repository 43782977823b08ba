"""Typed values that cross the protocol boundary: what decoders return and validators check.

Kept free of Flask and onnxruntime so the whole protocol layer is testable without a server.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class ProtocolError(Exception):
    """A request the server cannot accept; `status` is the HTTP status to answer with.

    The message names what was wrong (which input, expected vs got) and is sent to the client
    verbatim as `{"error": message}`.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.message!r})"


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the server advertises it; `-1` marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class InferInput:
    """One decoded input tensor: `data` already has `shape` and the dtype of `datatype`.

    BYTES inputs are numpy object arrays of Python `bytes`.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray


@dataclass
class RequestedOutput:
    """An output the client asked for; `binary` returns it in the binary tensor extension;
    `classification` > 0 returns its top K classes instead (the classification extension)."""

    name: str
    binary: bool
    classification: int = 0


@dataclass
class InferRequest:
    """A decoded Open Inference Protocol request.

    `outputs` is None when the client asked for every output. `binary_output` is the
    request-level `binary_data_output` (always true in raw-body mode, `raw`).
    """

    id: str | None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    parameters: dict = field(default_factory=dict)
    raw: bool = False
