"""Primitives on shapes drawn by hypothesis: broadcasting binary ops, reductions over random
axes and batched matmul, each gradchecked in float64 (reverse and forward mode)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, mutually_broadcastable_shapes

import engine
from engine import Tensor
from engine.autodiff import gradcheck

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b * b + 0.5),
    "pow": lambda a, b: (a * a + 0.5) ** b,
    "maximum": engine.maximum,
    "minimum": engine.minimum,
    "where": lambda a, b: engine.where(a > 0, a, b),
}


def _values(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


@SETTINGS
@given(
    op=st.sampled_from(sorted(BINARY)),
    shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    seed=st.integers(0, 2**16),
)
def test_broadcasting_binary_ops(op, shapes, seed):
    a, b = (_values(s, seed + i) for i, s in enumerate(shapes.input_shapes))
    a = np.where(np.abs(a) < 0.05, 0.5, a)  # keep off where's and maximum's kinks
    out = BINARY[op](Tensor(a), Tensor(b))
    assert out.shape == shapes.result_shape
    assert gradcheck(BINARY[op], [a, b])


@SETTINGS
@given(
    op=st.sampled_from(["sum", "mean", "max"]),
    shape=array_shapes(min_dims=1, max_dims=4, max_side=3),
    data=st.data(),
)
def test_reductions_over_random_axes(op, shape, data):
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), max_size=3, unique=True))
    axes = [a - len(shape) if data.draw(st.booleans()) else a for a in axes]  # negative dims too
    keep = data.draw(st.booleans())
    x = _values(shape, len(axes))
    dim = tuple(axes) if axes else None
    out = getattr(Tensor(x), op)(dim, keep)
    expected = getattr(np, {"sum": "sum", "mean": "mean", "max": "max"}[op])(
        x, axis=dim, keepdims=keep
    )
    np.testing.assert_allclose(out.data, expected)
    assert gradcheck(lambda t: getattr(t, op)(dim, keep), [x])


@SETTINGS
@given(
    batch=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
    m=st.integers(1, 3),
    k=st.integers(1, 3),
    n=st.integers(1, 3),
)
def test_batched_matmul_with_broadcast_batches(batch, m, k, n):
    sa, sb = batch.input_shapes
    a, b = _values((*sa, m, k), 1), _values((*sb, k, n), 2)
    np.testing.assert_allclose((Tensor(a) @ Tensor(b)).data, a @ b)
    assert gradcheck(lambda x, y: x @ y, [a, b])
