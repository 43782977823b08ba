"""What runs the requests of one model version: the only thing the core asks of a model.

An ONNX model's executor is its `Batcher` over onnxruntime sessions. A model of another kind -
an ensemble whose steps call other served models through the core, a Python model - brings its
own executor, and the core, every front door and model control treat it alike.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Executor(Protocol):
    """Runs requests: feeds by input name in, every output in signature order out.

    `parameters` are the request's own parameters (serve.core.inference.model_parameters), for
    the models that read them (a Python model's `request.parameters()`, an ensemble's steps);
    None when it has none."""

    def infer(
        self,
        feeds: dict[str, np.ndarray],
        deadline: float | None = None,
        parameters: dict | None = None,
    ) -> list:
        """Run one request from a thread; `deadline` is a time.monotonic() value."""
        ...

    async def infer_async(
        self,
        feeds: dict[str, np.ndarray],
        deadline: float | None = None,
        parameters: dict | None = None,
    ) -> list:
        """Run one request from an event loop without blocking it."""
        ...

    def close(self) -> None:
        """Take no new requests; what is queued still runs."""
        ...
