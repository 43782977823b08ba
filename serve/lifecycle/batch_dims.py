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

With `pad_variable_length_inputs`, the same is done for the variable non-batch dimensions
(`decide_lengths`): which output dimensions follow which input length, so that a request padded
into a batch gets its answer cut back to its own length.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from serve.core.padding import Dims, PaddingPlan
from serve.protocol.datatypes import numpy_dtype
from serve.protocol.types import TensorSpec

log = logging.getLogger("tapeserve.models")

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


def probe_feeds(
    specs: list[TensorSpec],
    batch: int,
    varied: bool,
    *,
    ones: bool = False,
    axes: dict[str, Dims] | None = None,
    lengths: tuple[int, ...] = (),
) -> dict[str, np.ndarray]:
    """Inputs of `batch` rows, variable dimensions 1 (those in `axes` the `lengths` of their
    axis): zeros, or with `varied` uniform [0, 1) floats, empty strings for BYTES. Integers
    and booleans stay 0 (they often index tables), or 1 with `ones` (a mask of ones keeps
    every real position)."""
    rng = np.random.default_rng(batch + sum(lengths))
    feeds = {}
    for spec in specs:
        shape = [batch, *(1 if d < 0 else d for d in spec.shape[1:])]
        for d, axis in (axes or {}).get(spec.name, ()):
            shape[d] = lengths[axis]
        dtype = numpy_dtype(spec.datatype)
        if dtype.kind == "O":
            feeds[spec.name] = np.full(shape, b"", dtype=object)
        elif varied and dtype.kind == "f":
            feeds[spec.name] = rng.random(shape).astype(dtype)
        else:
            feeds[spec.name] = (np.ones if ones else np.zeros)(shape, dtype)
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


# ---------------------------------------------------------------------------------------------
# Variable lengths (pad_variable_length_inputs)

#: The two probe lengths of axis k are PROBE_LENGTHS[0] + k and PROBE_LENGTHS[1] + 2k: distinct
#: from each other, from the other axes' and from the probe batch.
PROBE_LENGTHS = (4, 7)
#: Largest relative difference allowed between a request's answer alone and padded (float
#: outputs; integer and string outputs must be equal): kernels sum in another order on other
#: shapes, a model that reads its padding differs by far more.
PADDING_TOLERANCE = 1e-3


class PaddingRefused(ValueError):
    """`pad_variable_length_inputs` is on but the model cannot be batched that way; the message
    says why and what to do."""


def _axes(session) -> tuple[int, dict[str, tuple[tuple[int, int], ...]]]:
    """The inputs' variable non-batch dimensions grouped into axes: dimensions with the same
    symbol in the graph are one axis; an unnamed one is an axis of its own."""
    symbols: dict[str, int] = {}
    count = 0
    inputs = {}
    for spec in session.inputs:
        graph = session.dims.get(spec.name) or []
        dims = []
        for d in range(1, len(spec.shape)):
            if spec.shape[d] != -1:
                continue
            symbol = graph[d] if d < len(graph) and isinstance(graph[d], str) else None
            if symbol is None:
                axis, count = count, count + 1
            elif symbol in symbols:
                axis = symbols[symbol]
            else:
                axis = symbols[symbol] = count
                count += 1
            dims.append((d, axis))
        if dims:
            inputs[spec.name] = tuple(dims)
    return count, inputs


def padding_values(specs: list[TensorSpec], configured: dict[str, object]) -> dict[str, object]:
    """Every input's padding value in its dtype: the configured one, else 0 (empty for BYTES);
    raises PaddingRefused naming an unknown input or a value the dtype cannot hold."""
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(configured) - set(by_name))
    if unknown:
        raise PaddingRefused(
            f"config.json sets padding_value for {', '.join(map(repr, unknown))}, which the "
            f"model has no input named; its inputs: {', '.join(by_name)}"
        )
    values: dict[str, object] = {}
    for spec in specs:
        dtype = numpy_dtype(spec.datatype)
        value = configured.get(spec.name, "" if dtype.kind == "O" else 0)
        if dtype.kind == "O":
            if not isinstance(value, str):
                raise PaddingRefused(
                    f"input '{spec.name}' is BYTES: its padding_value must be a string, got "
                    f"{value!r}"
                )
            values[spec.name] = value.encode()
            continue
        try:
            if isinstance(value, str):
                raise ValueError
            typed = np.asarray(value).astype(dtype)
            ok = bool(typed == value) or (dtype.kind == "f" and np.isnan(typed) == np.isnan(value))
        except (ValueError, TypeError, OverflowError):
            ok = False
        if not ok:
            raise PaddingRefused(
                f"input '{spec.name}' is {spec.datatype}: padding_value {value!r} is not a "
                f"{spec.datatype} value"
            )
        values[spec.name] = typed[()]
    return values


def decide_lengths(
    session, configured: dict[str, object], buckets: tuple[int, ...] = ()
) -> PaddingPlan | None:
    """The padding plan of a model whose outputs all carry the batch dimension: which input
    dimensions are padded (grouped into axes), with what, and which output dimensions follow
    which axis. None when no input has a variable non-batch dimension (nothing to pad).

    As for the batch dimension, the model runs at two lengths per axis: an output dimension
    follows an axis when it equals the axis's length both times, and is left alone when it does
    not change; one that changes otherwise cannot be cut back per request, and the model is
    refused (PaddingRefused). Then a request of the first lengths runs alone and padded to the
    second: its answer must not change (the model must ignore padded positions, e.g. through
    an attention mask padded with 0), else the model is refused too.
    """
    values = padding_values(session.inputs, configured)
    count, inputs = _axes(session)
    if not count:
        return None
    names = [spec.name for spec in session.outputs]
    probes = [
        tuple(base + k * (1 + i) for k in range(count)) for i, base in enumerate(PROBE_LENGTHS)
    ]
    try:
        runs = [
            session.run(probe_feeds(session.inputs, 2, False, axes=inputs, lengths=p))
            for p in probes
        ]
    except Exception as exc:
        outputs = _static_lengths(session, names, inputs, exc)
    else:
        outputs = _traced_lengths(names, runs, probes)
    plan = PaddingPlan(count, inputs, values, outputs, tuple(buckets))
    _check_padding_ignored(session, plan, probes, names)
    return plan


def _traced_lengths(names: list[str], runs: list, probes: list[tuple[int, ...]]):
    outputs = []
    for k, name in enumerate(names):
        first, second = np.shape(runs[0][k]), np.shape(runs[1][k])
        if len(first) != len(second):
            raise PaddingRefused(
                f"output '{name}' has rank {len(first)} at input lengths {probes[0]} and "
                f"{len(second)} at {probes[1]}: it cannot be cut back to each request's length"
            )
        dims = []
        for d in range(1, len(first)):
            if first[d] == second[d]:
                continue
            pairs = list(zip(probes[0], probes[1], strict=True))
            axis = pairs.index((first[d], second[d])) if (first[d], second[d]) in pairs else None
            if axis is None:
                raise PaddingRefused(
                    f"output '{name}' dimension {d} is {first[d]} at input lengths "
                    f"{probes[0]} and {second[d]} at {probes[1]}: it changes with the inputs' "
                    "lengths but does not equal one, so it cannot be cut back to each "
                    "request's length; turn pad_variable_length_inputs off for this model"
                )
            dims.append((d, axis))
        outputs.append(tuple(dims))
    return tuple(outputs)


def _static_lengths(session, names: list[str], inputs: dict, exc: Exception):
    """When the probe inputs fail: an output dimension follows an axis when the graph names it
    with that axis's symbol; a variable dimension with another symbol, or none, refuses."""
    symbols = {}
    for name, dims in inputs.items():
        graph = session.dims.get(name) or []
        for d, axis in dims:
            if d < len(graph) and isinstance(graph[d], str):
                symbols[graph[d]] = axis
    outputs = []
    for name in names:
        graph = session.dims.get(name) or []
        dims = []
        for d in range(1, len(graph)):
            if isinstance(graph[d], int) and graph[d] >= 0:
                continue
            if not isinstance(graph[d], str) or graph[d] not in symbols:
                raise PaddingRefused(
                    f"output '{name}' dimension {d} is variable ({graph[d]!r}) and the probe "
                    f"inputs failed ({exc}), so which input length it follows is unknown"
                )
            dims.append((d, symbols[graph[d]]))
        outputs.append(tuple(dims))
    return tuple(outputs)


def _check_padding_ignored(session, plan: PaddingPlan, probes, names: list[str]) -> None:
    feeds = probe_feeds(session.inputs, 2, True, ones=True, axes=plan.inputs, lengths=probes[0])
    try:
        alone = session.run(feeds)
        padded = session.run(plan.pad([feeds], [probes[0]], probes[1]))
    except Exception as exc:  # the model refuses these values: it cannot be checked here
        log.warning(
            "could not check that padding leaves the answers unchanged (probe inputs failed: "
            "%s); make sure the model ignores padded positions",
            exc,
        )
        return
    cut = plan.cut(padded, 0, 2, probes[0])
    for name, want, got in zip(names, alone, cut, strict=True):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape:
            differs = f"has shape {got.shape} instead of {want.shape}"
        elif want.dtype.kind == "f":
            scale = max(float(np.max(np.abs(want))) if want.size else 0.0, 1e-12)
            err = float(np.max(np.abs(got.astype(np.float64) - want))) / scale if want.size else 0.0
            differs = f"differs by {err:.2g} (relative)" if not err <= PADDING_TOLERANCE else ""
        else:
            differs = "" if np.array_equal(want, got) else "differs"
        if differs:
            values = ", ".join(
                f"{k}={getattr(v, 'item', lambda v=v: v)()!r}"
                for k, v in plan.values.items()
                if k in plan.inputs
            )
            raise PaddingRefused(
                f"padding changes the answers: output '{name}' of a request of lengths "
                f"{probes[0]} {differs} when its inputs are padded to {probes[1]} (padding "
                f"values {values}); the model must ignore padded positions, e.g. through an "
                "attention mask padded with 0 (set an input's padding_value in config.json), "
                "or leave pad_variable_length_inputs off"
            )
