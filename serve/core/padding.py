"""Batching requests of different lengths: pad, run once, cut each answer back.

With `pad_variable_length_inputs` (TF Serving's batching parameter), requests whose inputs
differ only in their variable non-batch dimensions - token sequences of 16 and 40 tokens - may
share a batch: each input is padded to the longest in the batch with its padding value (0 by
default: an attention mask padded with 0 keeps a transformer's answers for the real tokens),
the batch runs once, and each request gets its rows of every output, cut back to its own
length along the output dimensions that follow an input dimension. Which output dimensions
follow which input dimension was decided when the model loaded
(serve.lifecycle.batch_dims.decide_lengths); outputs that follow none (a pooled vector) are
only split by rows.

The input dimensions that vary together form an *axis* (BERT's three inputs share one: the
sequence). A request's *size* is its rows times the product of its axis lengths (tokens, for
BERT), and the cost of a run is fitted online as `seconds = overhead + per_element * size`
(`RunCost`, robust to runs slowed by a busy machine): a queued request joins a batch only when
the padding it adds costs less than the fixed cost of a run of its own. So on a CPU, where a
transformer's cost per token hardly falls with the batch, a 16-token request is not padded to
128, while where a run's fixed cost dominates (a GPU, a small model), unequal lengths batch
freely. Until the fit has enough runs of different sizes, only requests of equal lengths batch
(as without padding).

With `padding_buckets` (ascending length bounds, e.g. 16, 32, 64, 128) the choice is the
user's instead: a request batches only with requests whose lengths fall in the same buckets
(a 16-token request never waits for or pays for a 128-token one), and within a bucket always.

Knows nothing of ONNX or HTTP: the plan is plain data made by the lifecycle.
"""

from __future__ import annotations

import bisect
import collections
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: (dimension index, axis index) pairs.
Dims = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PaddingPlan:
    """Which dimensions are padded and cut, and with what: decided once per model version."""

    #: Number of axes (groups of input dimensions that vary together).
    axes: int
    #: Input name -> its variable non-batch dimensions and the axis of each.
    inputs: dict[str, Dims]
    #: Input name -> the value its padded positions get (of the input's dtype).
    values: dict[str, object]
    #: Per output, in signature order: the dimensions that follow an axis (cut to the request's
    #: length); empty for an output that follows none.
    outputs: tuple[Dims, ...]
    #: Upper bounds of the length buckets (ascending; empty: no buckets, the cost model
    #: decides). Lengths above the last bound share one more bucket.
    buckets: tuple[int, ...] = ()

    def lengths(self, feeds: dict[str, np.ndarray]) -> tuple[int, ...] | None:
        """Each axis's length in this request; None when its inputs disagree on one (or lack
        one): such a request batches only with requests of exactly its shapes."""
        found: list[int | None] = [None] * self.axes
        for name, dims in self.inputs.items():
            arr = feeds.get(name)
            if arr is None:
                return None
            for dim, axis in dims:
                if arr.ndim <= dim:
                    return None
                size = arr.shape[dim]
                if found[axis] is None:
                    found[axis] = size
                elif found[axis] != size:
                    return None
        if any(n is None or n == 0 for n in found):
            return None
        return tuple(found)  # type: ignore[arg-type]

    def key(self, feeds: dict[str, np.ndarray], lengths: tuple[int, ...]) -> tuple:
        """Requests that may be padded into one batch share this key: the same inputs, ranks,
        dtypes and fixed dimensions, and length buckets; the padded dimensions are left out."""
        parts: list = [tuple(bisect.bisect_left(self.buckets, n) for n in lengths)]
        for name, arr in feeds.items():
            shape = list(arr.shape[1:])
            for dim, _ in self.inputs.get(name, ()):
                if 0 < dim <= len(shape):
                    shape[dim - 1] = -1
            parts.append((name, tuple(shape), arr.dtype.str))
        return ("padded", *parts)

    def pad(
        self,
        feeds: Sequence[dict[str, np.ndarray]],
        lengths: Sequence[tuple[int, ...]],
        longest: tuple[int, ...],
    ) -> dict[str, np.ndarray]:
        """One batch of every input: each request's rows in turn, padded to `longest`."""
        out = {}
        for name in feeds[0]:
            dims = self.inputs.get(name)
            parts = [f[name] for f in feeds]
            if not dims or all(own == longest for own in lengths):
                out[name] = np.concatenate(parts)
                continue
            shape = list(parts[0].shape)
            shape[0] = sum(p.shape[0] for p in parts)
            for dim, axis in dims:
                shape[dim] = longest[axis]
            batch = np.full(shape, self.values.get(name, 0), dtype=parts[0].dtype)
            row = 0
            for part in parts:
                index = [slice(row, row + part.shape[0])] + [slice(None)] * (part.ndim - 1)
                for dim, _axis in dims:
                    index[dim] = slice(0, part.shape[dim])
                batch[tuple(index)] = part
                row += part.shape[0]
            out[name] = batch
        return out

    def fits(self, outputs: Sequence[np.ndarray], longest: tuple[int, ...]) -> bool:
        """Whether the outputs of a padded run have the lengths the plan expects (else the
        batch's requests are run one by one: never cut what is not understood)."""
        for out, dims in zip(outputs, self.outputs, strict=True):
            for dim, axis in dims:
                if out.ndim <= dim or out.shape[dim] != longest[axis]:
                    return False
        return True

    def cut(
        self, outputs: Sequence[np.ndarray], start: int, end: int, lengths: tuple[int, ...]
    ) -> list[np.ndarray]:
        """One request's answer: rows start:end of every output, cut to its own lengths."""
        answer = []
        for out, dims in zip(outputs, self.outputs, strict=True):
            part = out[start:end]
            if dims:
                index = [slice(None)] * part.ndim
                for dim, axis in dims:
                    index[dim] = slice(0, lengths[axis])
                cut = part[tuple(index)]
                if cut.shape != part.shape:
                    part = np.ascontiguousarray(cut)
            answer.append(part)
        return answer


def size(rows: int, lengths: tuple[int, ...]) -> int:
    """Elements of a run along the batch and the padded axes: rows x tokens, for BERT."""
    return rows * math.prod(lengths)


class RunCost:
    """`seconds = overhead + per_element * size`, fitted over the recent runs.

    Theil-Sen (the median of the slopes between pairs of runs, then the median intercept), over
    the last `window` runs and refitted every `refit` runs: a run slowed by a busy machine or a
    new shape's allocations does not move it, and it follows a load that changes.
    `overhead_elements()` is the fixed cost of a run in elements (overhead / per_element): the
    padding worth adding to a batch rather than running a request on its own."""

    def __init__(self, window: int = 64, refit: int = 8, min_runs: int = 8) -> None:
        self._runs: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)
        self._refit = refit
        self._min_runs = min_runs
        self._since = 0
        self._tried = False  # a fit was attempted: the next one waits for `refit` more runs
        self._fitted: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def observe(self, elements: int, seconds: float) -> None:
        with self._lock:
            self._runs.append((float(elements), float(seconds)))
            self._since += 1

    def fit(self) -> tuple[float, float] | None:
        """(overhead seconds, seconds per element), or None before `min_runs` runs of at least
        three different sizes."""
        with self._lock:
            if len(self._runs) < self._min_runs or (self._tried and self._since < self._refit):
                return self._fitted
            runs = np.array(self._runs)
            self._since, self._tried = 0, True
        x, y = runs[:, 0], runs[:, 1]
        if len(np.unique(x)) < 3:
            with self._lock:
                self._fitted = None
            return None
        i, j = np.triu_indices(len(x), 1)
        apart = x[i] != x[j]
        slope = float(np.median((y[j] - y[i])[apart] / (x[j] - x[i])[apart]))
        overhead = max(0.0, float(np.median(y - slope * x)))
        with self._lock:
            self._fitted = (overhead, slope)
        return self._fitted

    def overhead_elements(self) -> float | None:
        """Padding (in elements) that costs what one more run costs: inf when a run's time does
        not grow with its size; None while unknown."""
        fitted = self.fit()
        if fitted is None:
            return None
        overhead, per_element = fitted
        if per_element <= 0:
            return math.inf
        return overhead / per_element
