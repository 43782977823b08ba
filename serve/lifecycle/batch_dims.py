"""Which outputs of a model carry the batch dimension, decided once at load time.

The dynamic batcher runs many requests as one batch and gives each its rows of every output. That
is right only for outputs whose first dimension is the batch: a detector's selected boxes
(NonMaxSuppression), the positions NonZero finds or a TopK over the whole batch have as many rows
as the data asks for, and when that number happens to equal the batch size, splitting by rows
hands requests each other's answers. So, as exporters verify their dynamic axes, the model is
run at two batch sizes with different values: an output carries the batch dimension when its
first dimension is the batch size both times. When the probe cannot run (a model that refuses
synthesized inputs), the graph decides: the output's first dimension must be the same symbol as
the inputs' batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve.protocol.datatypes import numpy_dtype
from serve.protocol.types import TensorSpec

#: The two probe batch sizes (not 1: a data-dependent output often has one row for one input).
PROBE_BATCHES = (2, 3)


@dataclass(frozen=True)
class BatchOutputs:
    """The verdict: `batched` outputs follow the batch, `other` do not; `how` says why."""

    batched: tuple[str, ...]
    other: tuple[str, ...]
    how: str

    @property
    def all_batched(self) -> bool:
        return not self.other


def probe_feeds(specs: list[TensorSpec], batch: int, varied: bool) -> dict[str, np.ndarray]:
    """Inputs of `batch` rows, variable dimensions 1: zeros, or with `varied` uniform [0, 1)
    floats (integers stay 0: they often index tables), empty strings for BYTES."""
    rng = np.random.default_rng(batch)
    feeds = {}
    for spec in specs:
        shape = (batch, *(1 if d < 0 else d for d in spec.shape[1:]))
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind == "O":
            feeds[spec.name] = np.full(shape, b"", dtype=object)
        elif varied and dtype.kind == "f":
            feeds[spec.name] = rng.random(shape).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(shape, dtype)
    return feeds


def decide(session) -> BatchOutputs:
    """The verdict for a `serve.lifecycle.runtime.Session` whose inputs all have a variable
    first dimension."""
    names = [spec.name for spec in session.outputs]
    try:
        runs = [
            session.run(probe_feeds(session.inputs, batch, varied=i == 1))
            for i, batch in enumerate(PROBE_BATCHES)
        ]
    except Exception as exc:  # invalid synthesized input: the graph's shapes decide
        return _static(session, names, f"synthesized inputs failed ({exc}); graph shapes")
    follows = [
        all(
            np.ndim(out[k]) >= 1 and np.shape(out[k])[0] == b
            for out, b in zip(runs, PROBE_BATCHES, strict=True)
        )
        for k in range(len(names))
    ]
    how = f"ran batches of {PROBE_BATCHES[0]} and {PROBE_BATCHES[1]}"
    return BatchOutputs(
        tuple(n for n, f in zip(names, follows, strict=True) if f),
        tuple(n for n, f in zip(names, follows, strict=True) if not f),
        how,
    )


def _static(session, names: list[str], how: str) -> BatchOutputs:
    symbols = {session.dims[spec.name][0] for spec in session.inputs if session.dims.get(spec.name)}
    symbols = {s for s in symbols if isinstance(s, str)}

    def follows(name: str) -> bool:
        dims = session.dims.get(name) or []
        return bool(dims) and isinstance(dims[0], str) and dims[0] in symbols

    return BatchOutputs(
        tuple(n for n in names if follows(n)), tuple(n for n in names if not follows(n)), how
    )
