"""Shape primitives: reshape, transpose, broadcast_to, squeeze/unsqueeze, concat, getitem, pad."""

from __future__ import annotations

import numpy as np

from engine.ops import Linear, register
from engine.ops._derive import sum_to
from engine.ops._util import INT64_MAX, onnx_axes, reshape_target
from engine.tensor import apply


@register
class Reshape(Linear):
    name = "reshape"

    def forward(x, shape):
        return x.reshape(shape)

    def transpose(g, node):
        return (g.reshape(node.xs[0].shape),)

    def onnx(ctx, ins, node):
        target = reshape_target(node.inputs[0].shape, node.outputs[0].shape)
        return ctx.node("Reshape", [ins[0], ctx.const(target, "shape")])


@register
class Transpose(Linear):
    """Permute axes (`perm` like numpy.transpose / torch.permute)."""

    name = "transpose"

    def forward(x, perm):
        return np.transpose(x, perm)

    def transpose(g, node):
        inverse = tuple(int(a) for a in np.argsort(node.attrs["perm"]))
        return (apply(Transpose, [g], perm=inverse),)

    def onnx(ctx, ins, node):
        return ctx.node("Transpose", ins, perm=[int(p) for p in node.attrs["perm"]])


@register
class BroadcastTo(Linear):
    name = "broadcast_to"

    def forward(x, shape):
        return np.broadcast_to(x, shape)

    def transpose(g, node):
        return (sum_to(g, node.xs[0].shape),)

    def onnx(ctx, ins, node):
        shape = list(node.attrs["shape"])
        in_shape = node.inputs[0].shape
        # Expand broadcasts both ways: a 1 keeps the input's (symbolic batch) dimension
        offset = len(shape) - len(in_shape)
        if in_shape and offset == 0 and in_shape[0] == shape[0]:
            shape[0] = 1
        return ctx.node("Expand", [ins[0], ctx.const(np.asarray(shape, np.int64), "shape")])


def _axes_onnx(ctx, op, ins, axes):
    if ctx.opset >= 13:
        return ctx.node(op, [ins[0], onnx_axes(ctx, axes)])
    return ctx.node(op, ins, axes=list(axes))


@register
class Squeeze(Linear):
    """Remove the given size-1 axes (non-negative)."""

    name = "squeeze"

    def forward(x, axes):
        return np.squeeze(x, axis=axes)

    def transpose(g, node):
        return (g.reshape(node.xs[0].shape),)

    def onnx(ctx, ins, node):
        return _axes_onnx(ctx, "Squeeze", ins, node.attrs["axes"])


@register
class Unsqueeze(Linear):
    """Insert size-1 axes at the given (output, non-negative) positions."""

    name = "unsqueeze"

    def forward(x, axes):
        return np.expand_dims(x, axes)

    def transpose(g, node):
        return (g.reshape(node.xs[0].shape),)

    def onnx(ctx, ins, node):
        return _axes_onnx(ctx, "Unsqueeze", ins, node.attrs["axes"])


@register
class Concat(Linear):
    """Join any number of tensors along an existing axis."""

    name = "concat"

    def forward(*xs, axis=0):
        return np.concatenate(xs, axis=axis)

    def transpose(g, node):  # each input's slice of g
        axis = node.attrs["axis"]
        parts, start = [], 0
        for x, need in zip(node.xs, node.needs, strict=True):
            stop = start + x.shape[axis]
            index = (slice(None),) * axis + (slice(start, stop),)
            parts.append(apply(GetItem, [g], index=index) if need else None)
            start = stop
        return tuple(parts)

    def onnx(ctx, ins, node):
        return ctx.node("Concat", ins, axis=node.attrs["axis"])


def _has_advanced(index) -> bool:
    return any(isinstance(i, (np.ndarray, list)) for i in index)


@register
class GetItem(Linear):
    """x[index]: basic slicing (slices, ints, None, Ellipsis) and integer/boolean arrays.

    `index` is always a tuple; arrays inside it are numpy arrays.
    """

    name = "getitem"

    def forward(x, index):
        return x[index]

    def transpose(g, node):
        return (apply(ScatterAdd, [g], shape=node.xs[0].shape, index=node.attrs["index"]),)

    def onnx(ctx, ins, node):
        return _lower_getitem(ctx, ins[0], node.attrs["index"], node.inputs[0].shape)


def _lower_getitem(ctx, x, index, in_shape):
    """Slice for basic indexing, Gather for one integer array; anything else is refused."""
    arrays = [k for k, i in enumerate(index) if isinstance(i, np.ndarray)]
    if len(arrays) > 1 or any(isinstance(i, np.ndarray) and i.dtype == bool for i in index):
        raise NotImplementedError("getitem lowering supports at most one integer index array")
    # expand Ellipsis to full slices so positions map onto input axes
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (len(in_shape) - consumed))
        else:
            expanded.append(i)
    starts, ends, axes, steps, squeeze, unsqueeze, gather = [], [], [], [], [], [], None
    axis = 0
    out_axis = 0
    for i in expanded:
        if i is None:
            unsqueeze.append(out_axis)
            out_axis += 1
            continue
        if isinstance(i, slice):
            if i != slice(None):
                step = 1 if i.step is None else int(i.step)
                default_start, default_end = (0, INT64_MAX) if step > 0 else (-1, -INT64_MAX)
                starts.append(default_start if i.start is None else int(i.start))
                ends.append(default_end if i.stop is None else int(i.stop))
                axes.append(axis)
                steps.append(step)
            out_axis += 1
        elif isinstance(i, np.ndarray):
            gather = (axis, i)
            out_axis += i.ndim
        else:
            k = int(i)
            starts.append(k)
            ends.append(k + 1 if k != -1 else INT64_MAX)
            axes.append(axis)
            steps.append(1)
            squeeze.append(axis)
        axis += 1
    out = x
    if axes:
        named = ((starts, "starts"), (ends, "ends"), (axes, "axes"), (steps, "steps"))
        consts = [ctx.const(np.asarray(v, np.int64), h) for v, h in named]
        out = ctx.node("Slice", [out, *consts])
    if gather is not None:
        g_axis, idx = gather
        out = ctx.node("Gather", [out, ctx.const(idx.astype(np.int64), "indices")], axis=g_axis)
        shift = idx.ndim - 1
        squeeze = [a + shift if a > g_axis else a for a in squeeze]
    if squeeze:
        out = _axes_onnx(ctx, "Squeeze", [out], squeeze)
    if unsqueeze:
        out = _axes_onnx(ctx, "Unsqueeze", [out], unsqueeze)
    return out


@register
class ScatterAdd(Linear):
    """zeros(shape) with g added at x[index] (repeated positions add up): getitem's adjoint.

    `shape` and `index` are those of the getitem it transposes; `unique=True` promises that no
    position repeats, so a plain (much faster) assignment does.
    """

    name = "scatter_add"

    def forward(g, shape, index, unique=False):
        out = np.zeros(shape, dtype=g.dtype)
        if _has_advanced(index) and not unique:
            np.add.at(out, index, g)
        else:
            out[index] = g
        return out

    def transpose(g, node):
        return (apply(GetItem, [g], index=node.attrs["index"]),)

    def onnx(ctx, ins, node):
        return _lower_scatter_add(ctx, ins[0], node)


@register
class Pad(Linear):
    """Constant padding; `pads` is one (before, after) pair per axis (affine with a nonzero
    fill value: its linear part pads with zeros)."""

    name = "pad"
    tangent_attrs = {"value": 0.0}

    def forward(x, pads, value=0.0):
        return np.pad(x, pads, mode="constant", constant_values=value)

    def transpose(g, node):
        index = tuple(slice(b, g.shape[k] - a) for k, (b, a) in enumerate(node.attrs["pads"]))
        return (apply(GetItem, [g], index=index),)

    def onnx(ctx, ins, node):
        pads = node.attrs["pads"]
        flat = [b for b, _ in pads] + [a for _, a in pads]
        value = ctx.const(np.asarray(node.attrs["value"], node.inputs[0].dtype), "pad_value")
        return ctx.node("Pad", [ins[0], ctx.const(np.asarray(flat, np.int64), "pads"), value])


def _lower_scatter_add(ctx, g, node):
    """Pad for basic indexing with unit steps (g's squeezed and inserted axes undone first);
    anything else is refused."""
    shape, index = node.attrs["shape"], node.attrs["index"]
    if _has_advanced(index):
        raise NotImplementedError("scatter_add lowering supports basic indexing only")
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    expanded = []
    for i in index:
        expanded.extend([slice(None)] * (len(shape) - consumed) if i is Ellipsis else [i])
    expanded.extend([slice(None)] * (len(shape) - sum(1 for i in expanded if i is not None)))
    inserted = [k for k, i in enumerate(_out_axes(expanded)) if i is None]
    out = _axes_onnx(ctx, "Squeeze", [g], inserted) if inserted else g
    kept = [i for i in expanded if i is not None]
    picked = [k for k, i in enumerate(kept) if not isinstance(i, slice)]
    if picked:
        out = _axes_onnx(ctx, "Unsqueeze", [out], picked)
    before, after = [], []
    for axis, (i, n) in enumerate(zip(kept, shape, strict=True)):
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                raise NotImplementedError("scatter_add lowering supports unit-step slices only")
            stop = max(stop, start)
        else:
            start = int(i) % n
            stop = start + 1
        if axis == 0 and (start, stop) != (0, n):
            raise NotImplementedError("scatter_add lowering cannot slice the batch dimension")
        before.append(start)
        after.append(n - stop)
    if not any(before) and not any(after):
        return out
    pads = ctx.const(np.asarray(before + after, np.int64), "pads")
    return ctx.node("Pad", [out, pads])


def _out_axes(expanded):
    """For each axis of the getitem's output: the index entry that made it (None for new)."""
    axes = []
    for i in expanded:
        if i is None or isinstance(i, slice):
            axes.append(i)
    return axes
