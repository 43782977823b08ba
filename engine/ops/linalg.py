"""Matrix multiplication (numpy matmul semantics: 1-D operands and broadcast batches)."""

from __future__ import annotations

import numpy as np

from engine.ops import Primitive, register
from engine.ops._util import unbroadcast


@register
class MatMul(Primitive):
    name = "matmul"

    def forward(a, b):
        return a @ b

    def vjp(g, node):
        a, b = node.xs
        if a.ndim == 1 and b.ndim == 1:
            return (g * b if node.needs[0] else None, g * a if node.needs[1] else None)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        ga = gb = None
        if node.needs[0]:
            ga = unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape)
        if node.needs[1]:
            if a2.ndim == 2 and g2.ndim == 2:
                gb = (a2.T @ g2).reshape(b.shape)
            else:
                gb = unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape)
        return ga, gb

    def jvp(t, node):
        a, b = node.xs
        return t[0] @ b + a @ t[1]

    def onnx(ctx, ins, node):
        return ctx.node("MatMul", ins)
