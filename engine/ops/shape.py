"""Shape primitives: reshape, transpose, broadcast_to, squeeze/unsqueeze, concat, getitem, pad."""

from __future__ import annotations

import numpy as np

from engine.ops import Primitive, register
from engine.ops._util import INT64_MAX, onnx_axes, reshape_target, unbroadcast


@register
class Reshape(Primitive):
    name = "reshape"

    def forward(x, shape):
        return x.reshape(shape)

    def vjp(g, node):
        return (g.reshape(node.xs[0].shape),)

    def jvp(t, node):
        return t[0].reshape(node.out.shape)

    def onnx(ctx, ins, node):
        target = reshape_target(node.inputs[0].shape, node.outputs[0].shape)
        return ctx.node("Reshape", [ins[0], ctx.const(target, "shape")])


@register
class Transpose(Primitive):
    """Permute axes (`perm` like numpy.transpose / torch.permute)."""

    name = "transpose"

    def forward(x, perm):
        return np.transpose(x, perm)

    def vjp(g, node):
        return (np.transpose(g, np.argsort(node.attrs["perm"])),)

    def jvp(t, node):
        return np.transpose(t[0], node.attrs["perm"])

    def onnx(ctx, ins, node):
        return ctx.node("Transpose", ins, perm=[int(p) for p in node.attrs["perm"]])


@register
class BroadcastTo(Primitive):
    name = "broadcast_to"

    def forward(x, shape):
        return np.broadcast_to(x, shape)

    def vjp(g, node):
        return (unbroadcast(g, node.xs[0].shape),)

    def jvp(t, node):
        return np.broadcast_to(t[0], node.attrs["shape"])

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
class Squeeze(Primitive):
    """Remove the given size-1 axes (non-negative)."""

    name = "squeeze"

    def forward(x, axes):
        return np.squeeze(x, axis=axes)

    def vjp(g, node):
        return (g.reshape(node.xs[0].shape),)

    def jvp(t, node):
        return t[0].reshape(node.out.shape)

    def onnx(ctx, ins, node):
        return _axes_onnx(ctx, "Squeeze", ins, node.attrs["axes"])


@register
class Unsqueeze(Primitive):
    """Insert size-1 axes at the given (output, non-negative) positions."""

    name = "unsqueeze"

    def forward(x, axes):
        return np.expand_dims(x, axes)

    def vjp(g, node):
        return (g.reshape(node.xs[0].shape),)

    def jvp(t, node):
        return t[0].reshape(node.out.shape)

    def onnx(ctx, ins, node):
        return _axes_onnx(ctx, "Unsqueeze", ins, node.attrs["axes"])


@register
class Concat(Primitive):
    """Join any number of tensors along an existing axis."""

    name = "concat"

    def forward(*xs, axis=0):
        return np.concatenate(xs, axis=axis)

    def vjp(g, node):
        axis = node.attrs["axis"]
        bounds = np.cumsum([x.shape[axis] for x in node.xs])[:-1]
        parts = np.split(g, bounds, axis=axis)
        return tuple(p if need else None for p, need in zip(parts, node.needs, strict=True))

    def jvp(t, node):
        return np.concatenate(t, axis=node.attrs["axis"])

    def onnx(ctx, ins, node):
        return ctx.node("Concat", ins, axis=node.attrs["axis"])


def _has_advanced(index) -> bool:
    return any(isinstance(i, (np.ndarray, list)) for i in index)


@register
class GetItem(Primitive):
    """x[index]: basic slicing (slices, ints, None, Ellipsis) and integer/boolean arrays.

    `index` is always a tuple; arrays inside it are numpy arrays.
    """

    name = "getitem"

    def forward(x, index):
        return x[index]

    def vjp(g, node):
        x, index = node.xs[0], node.attrs["index"]
        gx = np.zeros(x.shape, dtype=g.dtype)
        if _has_advanced(index):
            np.add.at(gx, index, g)
        else:
            gx[index] = g
        return (gx,)

    def jvp(t, node):
        return t[0][node.attrs["index"]]

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
class Pad(Primitive):
    """Constant padding; `pads` is one (before, after) pair per axis."""

    name = "pad"

    def forward(x, pads, value=0.0):
        return np.pad(x, pads, mode="constant", constant_values=value)

    def vjp(g, node):
        index = tuple(slice(b, g.shape[k] - a) for k, (b, a) in enumerate(node.attrs["pads"]))
        return (g[index],)

    def jvp(t, node):
        return np.pad(t[0], node.attrs["pads"], mode="constant")

    def onnx(ctx, ins, node):
        pads = node.attrs["pads"]
        flat = [b for b, _ in pads] + [a for _, a in pads]
        value = ctx.const(np.asarray(node.attrs["value"], node.inputs[0].dtype), "pad_value")
        return ctx.node("Pad", [ins[0], ctx.const(np.asarray(flat, np.int64), "pads"), value])
