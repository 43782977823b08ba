"""Matrix multiplication (numpy matmul semantics: 1-D operands and broadcast batches)."""

from __future__ import annotations

from engine.ops import Multilinear, register
from engine.ops._derive import sum_to


def _swap(t):
    """The last two axes exchanged (a transposed view)."""
    return t.transpose(-1, -2)


def _shaped(t, shape):
    return t if t.shape == shape else t.reshape(shape)


@register
class MatMul(Multilinear):
    name = "matmul"

    def forward(a, b):
        return a @ b

    def transpose(g, node):  # d(a@b) = da@b + a@db: adjoints g@b^T and a^T@g
        a, b = node.inputs
        if a.ndim == 1 and b.ndim == 1:
            return (g * b if node.needs[0] else None, g * a if node.needs[1] else None)
        a2 = a.reshape(1, -1) if a.ndim == 1 else a
        b2 = b.reshape(-1, 1) if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = g2.unsqueeze(g2.ndim - 1)
        if b.ndim == 1:
            g2 = g2.unsqueeze(g2.ndim)
        ga = gb = None
        if node.needs[0]:
            ga = _shaped(sum_to(g2 @ _swap(b2), a2.shape), a.shape)
        if node.needs[1]:
            if a2.ndim == 2 and g2.ndim == 2:
                gb = _shaped(_swap(a2) @ g2, b.shape)
            else:
                gb = _shaped(sum_to(_swap(a2) @ g2, b2.shape), b.shape)
        return ga, gb

    def onnx(ctx, ins, node):
        return ctx.node("MatMul", ins)
