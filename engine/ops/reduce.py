"""Reductions over axes: sum, mean, max (amax semantics: ties share the gradient)."""

from __future__ import annotations

import math

import numpy as np

from engine.ops import Linear, Primitive, register
from engine.ops._util import norm_axes, onnx_reduce
from engine.tensor import Tensor


def _kept_shape(node) -> tuple[int, ...]:
    """The output's shape with the reduced axes kept as 1s (broadcasts against the input)."""
    shape = list(node.xs[0].shape)
    for a in node.attrs["axes"]:
        shape[a] = 1
    return tuple(shape)


def _spread(g, node):
    """A reduced cotangent broadcast back over the input's shape."""
    if not node.attrs["keepdims"]:
        g = g.reshape(_kept_shape(node))
    return g.broadcast_to(node.xs[0].shape)


def _onnx_axes(node):
    axes = node.attrs["axes"]
    return None if len(axes) == node.inputs[0].ndim else axes


@register
class Sum(Linear):
    """Sum over `axes` (a tuple of non-negative axes; all axes for a full reduction)."""

    name = "sum"

    def forward(x, axes, keepdims=False):
        return np.sum(x, axis=axes, keepdims=keepdims)

    def transpose(g, node):
        return (_spread(g, node),)

    def onnx(ctx, ins, node):
        return onnx_reduce(ctx, "ReduceSum", ins[0], _onnx_axes(node), node.attrs["keepdims"])


def _count(node):
    shape = node.xs[0].shape
    return math.prod(shape[a] for a in node.attrs["axes"])


@register
class Mean(Linear):
    name = "mean"

    def forward(x, axes, keepdims=False):
        return np.mean(x, axis=axes, keepdims=keepdims)

    def transpose(g, node):
        return (_spread(g * (1.0 / max(_count(node), 1)), node),)

    def onnx(ctx, ins, node):
        return onnx_reduce(ctx, "ReduceMean", ins[0], _onnx_axes(node), node.attrs["keepdims"])


def _max_share(node):
    """Each element's share of the maximum's derivative: ties split it evenly (torch.amax)."""
    x = node.xs[0]
    out = node.out if node.attrs["keepdims"] else node.out.reshape(_kept_shape(node))
    mask = (x == out).astype(x.dtype)
    return mask / mask.sum(axis=node.attrs["axes"], keepdims=True)


@register
class Max(Primitive):
    name = "max"

    def forward(x, axes, keepdims=False):
        return np.max(x, axis=axes, keepdims=keepdims)

    def jvp(t, node):  # the tangent at the winners (averaged over ties)
        share = Tensor._wrap(_max_share(node))
        return (t[0] * share).sum(axis=node.attrs["axes"], keepdims=node.attrs["keepdims"])

    def onnx(ctx, ins, node):
        return onnx_reduce(ctx, "ReduceMax", ins[0], _onnx_axes(node), node.attrs["keepdims"])


@register
class ArgMax(Primitive):
    """Index of the largest value along one axis (integer output, no gradient)."""

    name = "argmax"
    differentiable = False

    def forward(x, axis, keepdims=False):
        return np.argmax(x, axis=axis, keepdims=keepdims)

    def onnx(ctx, ins, node):
        axis = node.attrs["axis"]
        if axis is None:
            flat = ctx.node("Reshape", [ins[0], ctx.const(np.array([-1], np.int64), "flat")])
            return ctx.node("ArgMax", [flat], axis=0, keepdims=0)
        return ctx.node("ArgMax", ins, axis=axis, keepdims=int(node.attrs["keepdims"]))


__all__ = ["Sum", "Mean", "Max", "ArgMax", "norm_axes"]
