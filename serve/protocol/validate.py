"""Checks a decoded request against the model's advertised tensors, with messages that name
the input, what the model expects and what arrived."""

from __future__ import annotations

from serve.protocol.binary import fmt_shape
from serve.protocol.types import InferRequest, ProtocolError, TensorSpec


def check_timeout(timeout: object) -> int | None:
    """The request parameter `timeout` (microseconds; 0 or absent: none), or a 400."""
    if timeout is not None and (
        not isinstance(timeout, int) or isinstance(timeout, bool) or timeout < 0
    ):
        raise ProtocolError(
            400, f"'timeout' must be a non-negative integer of microseconds, got {timeout!r}"
        )
    return timeout  # type: ignore[return-value]


def shape_matches(expected: tuple[int, ...], got: tuple[int, ...]) -> bool:
    """Same rank and every fixed dimension equal; -1 matches any size."""
    return len(expected) == len(got) and all(
        e in (-1, g) for e, g in zip(expected, got, strict=True)
    )


def check_shape(what: str, expected: tuple[int, ...], got: tuple[int, ...]) -> None:
    """400 `input 'x': expected shape [-1, 784], got [2, 783]` on a mismatch."""
    if not shape_matches(expected, got):
        raise ProtocolError(
            400, f"{what}: expected shape {fmt_shape(expected)}, got {fmt_shape(got)}"
        )


def check_batch(
    specs: list[TensorSpec], shapes: dict[str, tuple[int, ...]], max_batch_size: int
) -> None:
    """For a batching model: inputs share dimension 0 and it is at most `max_batch_size`."""
    if max_batch_size <= 0:
        return
    batched = {name: shape[0] for name, shape in shapes.items() if shape}
    batch_inputs = [s.name for s in specs if s.shape and s.shape[0] == -1 and s.name in batched]
    sizes = {batched[name] for name in batch_inputs}
    if len(sizes) > 1:
        listed = ", ".join(f"'{n}': {batched[n]}" for n in batch_inputs)
        raise ProtocolError(400, f"inputs disagree on the batch dimension (dimension 0): {listed}")
    for name in batch_inputs:
        if batched[name] > max_batch_size:
            raise ProtocolError(
                400,
                f"input '{name}': batch size {batched[name]} exceeds the model's "
                f"max_batch_size of {max_batch_size}",
            )


def _names(specs: list[TensorSpec]) -> str:
    return ", ".join(repr(s.name) for s in specs) or "(none)"


def validate_request(
    req: InferRequest,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int,
) -> None:
    """Raise a 400 naming the problem when `req` does not fit the model's tensors.

    `max_batch_size` > 0 means the model batches along dimension 0 (where its spec is -1);
    a request batch above it is refused.
    """
    by_name = {spec.name: spec for spec in inputs}
    seen: dict[str, tuple[int, ...]] = {}
    for item in req.inputs:
        what = f"input '{item.name}'"
        if item.name in seen:
            raise ProtocolError(400, f"{what} is given more than once")
        spec = by_name.get(item.name)
        if spec is None:
            raise ProtocolError(400, f"unknown {what}; the model's inputs are: {_names(inputs)}")
        if item.datatype != spec.datatype:
            raise ProtocolError(
                400, f"{what}: expected datatype {spec.datatype}, got {item.datatype}"
            )
        check_shape(what, spec.shape, tuple(item.shape))
        seen[item.name] = tuple(item.shape)
    for spec in inputs:
        if spec.name not in seen:
            raise ProtocolError(
                400,
                f"missing input '{spec.name}' ({spec.datatype}, shape {fmt_shape(spec.shape)}); "
                f"the model's inputs are: {_names(inputs)}",
            )
    check_batch(inputs, seen, max_batch_size)
    if req.outputs:
        known = {spec.name for spec in outputs}
        for out in req.outputs:
            if out.name not in known:
                raise ProtocolError(
                    400, f"unknown output '{out.name}'; the model's outputs are: {_names(outputs)}"
                )
