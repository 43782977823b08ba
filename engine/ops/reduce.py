"""Reductions over axes: sum, mean, max (amax semantics: ties share the gradient)."""

from __future__ import annotations

import numpy as np

from engine.ops import Primitive, register
from engine.ops._util import norm_axes, onnx_reduce


def _expand(g, node):
    """Bring a reduced gradient back to a shape that broadcasts against the input."""
    if node.attrs["keepdims"]:
        return g
    shape = list(node.xs[0].shape)
    for a in node.attrs["axes"]:
        shape[a] = 1
    return g.reshape(shape)


def _onnx_axes(node):
    axes = node.attrs["axes"]
    return None if len(axes) == node.inputs[0].ndim else axes


@register
class Sum(Primitive):
    """Sum over `axes` (a tuple of non-negative axes; all axes for a full reduction)."""

    name = "sum"

    def forward(x, axes, keepdims=False):
        return np.sum(x, axis=axes, keepdims=keepdims)

    def vjp(g, node):
        return (np.broadcast_to(_expand(g, node), node.xs[0].shape),)

    def jvp(t, node):
        return np.sum(t[0], axis=node.attrs["axes"], keepdims=node.attrs["keepdims"])

    def onnx(ctx, ins, node):
        return onnx_reduce(ctx, "ReduceSum", ins[0], _onnx_axes(node), node.attrs["keepdims"])


def _count(node):
    shape = node.xs[0].shape
    return int(np.prod([shape[a] for a in node.attrs["axes"]]))


@register
class Mean(Primitive):
    name = "mean"

    def forward(x, axes, keepdims=False):
        return np.mean(x, axis=axes, keepdims=keepdims)

    def vjp(g, node):
        scale = np.asarray(1.0 / max(_count(node), 1), g.dtype)
        return (np.broadcast_to(_expand(g, node) * scale, node.xs[0].shape),)

    def jvp(t, node):
        return np.mean(t[0], axis=node.attrs["axes"], keepdims=node.attrs["keepdims"])

    def onnx(ctx, ins, node):
        return onnx_reduce(ctx, "ReduceMean", ins[0], _onnx_axes(node), node.attrs["keepdims"])


def _max_share(node):
    x = node.xs[0]
    out = node.out if node.attrs["keepdims"] else _expand(node.out, node)
    mask = (x == out).astype(x.dtype)
    return mask / mask.sum(axis=node.attrs["axes"], keepdims=True)


@register
class Max(Primitive):
    name = "max"

    def forward(x, axes, keepdims=False):
        return np.max(x, axis=axes, keepdims=keepdims)

    def vjp(g, node):
        return (_expand(g, node) * _max_share(node),)

    def jvp(t, node):
        share = _max_share(node)
        return np.sum(t[0] * share, axis=node.attrs["axes"], keepdims=node.attrs["keepdims"])

    def onnx(ctx, ins, node):
        return onnx_reduce(ctx, "ReduceMax", ins[0], _onnx_axes(node), node.attrs["keepdims"])


@register
class ArgMax(Primitive):
    """Index of the largest value along one axis (integer output, no gradient)."""

    name = "argmax"
    differentiable = False

    def forward(x, axis, keepdims=False):
        return np.argmax(x, axis=axis, keepdims=keepdims)

    def vjp(g, node):
        return (None,)

    def jvp(t, node):
        return None

    def onnx(ctx, ins, node):
        axis = node.attrs["axis"]
        if axis is None:
            flat = ctx.node("Reshape", [ins[0], ctx.const(np.array([-1], np.int64), "flat")])
            return ctx.node("ArgMax", [flat], axis=0, keepdims=0)
        return ctx.node("ArgMax", ins, axis=axis, keepdims=int(node.attrs["keepdims"]))


__all__ = ["Sum", "Mean", "Max", "ArgMax", "norm_axes"]
