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


def _rows(t, n):
    """A tensor as a 2-D stack of its last-axis rows (one GEMM instead of a batched matmul)."""
    return t if t.ndim == 2 else t.reshape(-1, n)


@register
class Linear(Multilinear):
    """x @ weight.T (+ bias), torch's F.linear as one primitive: one GEMM over all leading
    axes, the bias added in place, and two GEMMs back (the most common layer, fused for
    speed; lowered as MatMul(x, Transpose(w)) + Add, which the exporter turns into Gemm)."""

    name = "linear"
    bias_axis = -1

    def forward(x, w, *bias):
        out = x @ w.T if x.ndim == 2 else (x.reshape(-1, x.shape[-1]) @ w.T)
        if bias:
            out += bias[0]
        return out if x.ndim == 2 else out.reshape(*x.shape[:-1], w.shape[0])

    def transpose(g, node):  # d(x w^T) = dx w^T + x dw^T: adjoints g w and g^T x
        x, w = node.inputs[0], node.inputs[1]
        rows = _rows(g, w.shape[0])
        gx = gw = None
        if node.needs[0]:
            gx = rows @ w
            if x.ndim != 2:
                gx = gx.reshape(x.shape)
        if node.needs[1]:
            gw = rows.T @ _rows(x, x.shape[-1])
        return gx, gw

    def onnx(ctx, ins, node):
        out = ctx.node("MatMul", [ins[0], ctx.node("Transpose", [ins[1]], perm=[1, 0])])
        return ctx.node("Add", [out, ins[2]]) if len(ins) == 3 else out
