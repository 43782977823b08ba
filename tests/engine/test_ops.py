"""Every primitive on random float64 inputs (broadcasting included): gradcheck, and forward
mode against reverse mode. `CASES` is shared with the PyTorch parity tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import engine
import engine.functional as F
from engine import Tensor
from engine.autodiff import dual_level, gradcheck, make_dual
from engine.ops import DERIVATIVE_RULES, REGISTRY, RULES, Primitive
from engine.tensor import apply, backward


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def normal(*shape, seed=0):
    return _rng(seed).standard_normal(shape)


def positive(*shape, seed=0):
    return _rng(seed).uniform(0.5, 2.0, shape)


def away(*shape, seed=0, gap=0.1):
    """Values with |x| >= gap, so kinks (relu, abs, clip) are not straddled by eps."""
    x = _rng(seed).uniform(gap, 2.0, shape)
    return x * _rng(seed + 1).choice([-1.0, 1.0], shape)


def labels(n, classes, seed=0):
    return _rng(seed).integers(0, classes, n)


@dataclass
class Case:
    id: str
    ops: tuple[str, ...]
    fn: Callable[..., Tensor]
    inputs: list[np.ndarray]
    torch: Callable[..., Any] | None = None  # (torch, torch.nn.functional, *tensors)
    extra: dict = field(default_factory=dict)


def _idx(a):
    return a


POOL_OPS = ("max_pool2d", "max_pool2d_select", "max_pool2d_scatter")
WINDOW = {"kernel": (2, 2), "stride": (1, 2), "padding": (1, 0), "dilation": (1, 1)}
SCATTER_INDEX = (np.array([0, 2, 0, 1]), np.array([1, 3, 1, 0]))


def im2col(x):
    return apply(REGISTRY["im2col"], [x], **WINDOW)


def col2im(cols):  # columns of a (2, 3, 4, 5) image: 5x2 windows of 2x2
    return apply(REGISTRY["col2im"], [cols], x_shape=(2, 3, 4, 5), **WINDOW)


def torch_im2col(TF, x):
    """torch's unfold (N, C*kh*kw, L), reordered to the engine's (N*L, kh*kw*C)."""
    n, c = x.shape[:2]
    cols = TF.unfold(x, (2, 2), dilation=1, padding=(1, 0), stride=(1, 2))
    return cols.reshape(n, c, 4, -1).permute(0, 3, 2, 1).reshape(-1, 4 * c)


def torch_col2im(TF, cols):
    rows = cols.reshape(2, -1, 4, 3).permute(0, 3, 2, 1).reshape(2, 12, -1)
    return TF.fold(rows, (4, 5), (2, 2), dilation=1, padding=(1, 0), stride=(1, 2))


CASES = [
    # --- arithmetic with broadcasting ---
    Case("add", ("add",), lambda a, b: a + b, [normal(3, 4), normal(4, seed=1)],
         lambda T, TF, a, b: a + b),
    Case("add_both_broadcast", ("add",), lambda a, b: a + b,
         [normal(2, 1, 3), normal(4, 1, seed=1)], lambda T, TF, a, b: a + b),
    Case("sub", ("sub",), lambda a, b: a - b, [normal(3, 1), normal(1, 4, seed=1)],
         lambda T, TF, a, b: a - b),
    Case("mul", ("mul",), lambda a, b: a * b, [normal(2, 3), normal(3, seed=1)],
         lambda T, TF, a, b: a * b),
    Case("div", ("div",), lambda a, b: a / b, [normal(3, 4), away(4, seed=1, gap=0.5)],
         lambda T, TF, a, b: a / b),
    Case("pow_tensor", ("pow",), lambda a, b: a**b, [positive(3, 4), normal(4, seed=1)],
         lambda T, TF, a, b: a**b),
    Case("pow_scalar", ("pow",), lambda a: a**3, [normal(5)], lambda T, TF, a: a**3),
    Case("maximum", ("maximum",), lambda a, b: engine.maximum(a, b),
         [normal(3, 4), normal(4, seed=1)], lambda T, TF, a, b: T.maximum(a, b)),
    Case("minimum", ("minimum",), lambda a, b: engine.minimum(a, b),
         [normal(3, 1), normal(3, 4, seed=1)], lambda T, TF, a, b: T.minimum(a, b)),
    Case("neg", ("neg",), lambda a: -a, [normal(3, 2)], lambda T, TF, a: -a),
    # --- unary ---
    Case("exp", ("exp",), lambda a: a.exp(), [normal(3, 4)], lambda T, TF, a: a.exp()),
    Case("log", ("log",), lambda a: a.log(), [positive(3, 4)], lambda T, TF, a: a.log()),
    Case("sqrt", ("sqrt",), lambda a: a.sqrt(), [positive(3, 4)], lambda T, TF, a: a.sqrt()),
    Case("abs", ("abs",), lambda a: a.abs(), [away(3, 4)], lambda T, TF, a: a.abs()),
    Case("tanh", ("tanh",), lambda a: a.tanh(), [normal(3, 4)], lambda T, TF, a: a.tanh()),
    Case("sigmoid", ("sigmoid",), lambda a: a.sigmoid(), [normal(3, 4) * 4],
         lambda T, TF, a: a.sigmoid()),
    Case("relu", ("relu",), F.relu, [away(3, 4)], lambda T, TF, a: TF.relu(a)),
    Case("leaky_relu", ("leaky_relu",), lambda a: F.leaky_relu(a, 0.2), [away(3, 4)],
         lambda T, TF, a: TF.leaky_relu(a, 0.2)),
    Case("erf", ("erf",), engine.erf, [normal(4, 5) * 2], lambda T, TF, a: T.erf(a)),
    Case("gelu", ("gelu",), F.gelu, [normal(4, 5) * 2], lambda T, TF, a: TF.gelu(a)),
    Case("gelu_tanh", ("gelu",), lambda a: F.gelu(a, approximate="tanh"), [normal(4, 5) * 2],
         lambda T, TF, a: TF.gelu(a, approximate="tanh")),
    Case("clip", ("clip",), lambda a: a.clip(-0.5, 0.7),
         [np.array([-1.3, -0.9, -0.2, 0.1, 0.4, 0.9, 1.5])],
         lambda T, TF, a: a.clamp(-0.5, 0.7)),
    Case("clip_min_only", ("clip",), lambda a: a.clip(min=0.25), [away(6)],
         lambda T, TF, a: a.clamp(min=0.25)),
    Case("where", ("where",),
         lambda a, b: engine.where(Tensor(np.array([[True, False, True, False]] * 3)), a, b),
         [normal(3, 4), normal(4, seed=1)],
         lambda T, TF, a, b: T.where(T.tensor([[True, False, True, False]] * 3), a, b)),
    # --- matmul ---
    Case("matmul_2d", ("matmul",), lambda a, b: a @ b, [normal(3, 4), normal(4, 5, seed=1)],
         lambda T, TF, a, b: a @ b),
    Case("matmul_batched_broadcast", ("matmul",), lambda a, b: a @ b,
         [normal(2, 1, 3, 4), normal(3, 4, 2, seed=1)], lambda T, TF, a, b: a @ b),
    Case("matmul_vec_mat", ("matmul",), lambda a, b: a @ b, [normal(4), normal(2, 4, 3, seed=1)],
         lambda T, TF, a, b: a @ b),
    Case("matmul_mat_vec", ("matmul",), lambda a, b: a @ b, [normal(2, 3, 4), normal(4, seed=1)],
         lambda T, TF, a, b: a @ b),
    Case("matmul_vec_vec", ("matmul",), lambda a, b: a @ b, [normal(4), normal(4, seed=1)],
         lambda T, TF, a, b: a @ b),
    # --- reductions ---
    Case("sum_all", ("sum",), lambda a: a.sum(), [normal(3, 4)], lambda T, TF, a: a.sum()),
    Case("sum_axes_keepdim", ("sum",), lambda a: a.sum((0, 2), keepdim=True), [normal(2, 3, 4)],
         lambda T, TF, a: a.sum((0, 2), keepdim=True)),
    Case("mean_axis", ("mean",), lambda a: a.mean(axis=-1), [normal(2, 3, 4)],
         lambda T, TF, a: a.mean(-1)),
    Case("max_axis", ("max",), lambda a: a.max(1), [normal(3, 5)],
         lambda T, TF, a: a.amax(1)),
    Case("max_all_keepdims", ("max",), lambda a: a.max(keepdims=True), [normal(3, 5)],
         lambda T, TF, a: a.amax(dim=(0, 1), keepdim=True)),
    Case("var", ("mean", "sub", "mul", "sum", "div"), lambda a: a.var(1),
         [normal(3, 5)], lambda T, TF, a: a.var(1)),
    Case("std_biased", ("sqrt",), lambda a: a.std(0, unbiased=False, keepdim=True),
         [normal(4, 3)], lambda T, TF, a: a.std(0, unbiased=False, keepdim=True)),
    # --- shape ---
    Case("reshape", ("reshape",), lambda a: a.reshape(4, -1) * 1.5, [normal(2, 3, 2)],
         lambda T, TF, a: a.reshape(4, -1) * 1.5),
    Case("transpose", ("transpose",), lambda a: a.transpose(0, 2), [normal(2, 3, 4)],
         lambda T, TF, a: a.transpose(0, 2)),
    Case("permute", ("transpose",), lambda a: a.permute(2, 0, 1) * a.permute(2, 0, 1),
         [normal(2, 3, 4)], lambda T, TF, a: a.permute(2, 0, 1) ** 2),
    Case("broadcast_to", ("broadcast_to",), lambda a: a.broadcast_to((2, 3, 4)),
         [normal(3, 1)], lambda T, TF, a: a.broadcast_to((2, 3, 4))),
    Case("squeeze_unsqueeze", ("squeeze", "unsqueeze"),
         lambda a: a.squeeze(1).unsqueeze(0).unsqueeze(-1), [normal(3, 1, 4)],
         lambda T, TF, a: a.squeeze(1).unsqueeze(0).unsqueeze(-1)),
    Case("concat", ("concat",), lambda a, b, c: engine.concat([a, b, c], dim=1),
         [normal(2, 1), normal(2, 3, seed=1), normal(2, 2, seed=2)],
         lambda T, TF, a, b, c: T.cat([a, b, c], 1)),
    Case("stack", ("concat", "unsqueeze"), lambda a, b: engine.stack([a, b], dim=-1),
         [normal(2, 3), normal(2, 3, seed=1)], lambda T, TF, a, b: T.stack([a, b], -1)),
    Case("getitem_basic", ("getitem",), lambda a: a[1:, ::-2, None, 1], [normal(3, 5, 4)],
         lambda T, TF, a: a[1:].flip(1)[:, ::2, None, 1]),
    Case("getitem_ellipsis_int", ("getitem",), lambda a: a[..., -1], [normal(2, 3, 4)],
         lambda T, TF, a: a[..., -1]),
    Case("getitem_int_array_repeats", ("getitem",), lambda a: a[[0, 2, 0, 1]], [normal(3, 4)],
         lambda T, TF, a: a[[0, 2, 0, 1]]),
    Case("getitem_pairs", ("getitem",), lambda a: a[np.arange(3), np.array([1, 0, 3])],
         [normal(3, 4)], lambda T, TF, a: a[T.arange(3), T.tensor([1, 0, 3])]),
    Case("getitem_bool_mask", ("getitem",),
         lambda a: a[np.array([True, False, True])], [normal(3, 2)],
         lambda T, TF, a: a[T.tensor([True, False, True])]),
    Case("pad", ("pad",), lambda a: F.pad(a, (1, 2, 0, 1), value=0.5), [normal(2, 3, 4)],
         lambda T, TF, a: TF.pad(a, (1, 2, 0, 1), value=0.5)),
    # --- softmax family and losses ---
    Case("softmax", ("softmax",), lambda a: F.softmax(a, 1), [normal(3, 5)],
         lambda T, TF, a: TF.softmax(a, 1)),
    Case("softmax_dim0", ("softmax",), lambda a: F.softmax(a, 0), [normal(4, 2)],
         lambda T, TF, a: TF.softmax(a, 0)),
    Case("log_softmax", ("log_softmax",), lambda a: F.log_softmax(a, -1), [normal(3, 5)],
         lambda T, TF, a: TF.log_softmax(a, -1)),
    Case("nll_loss_mean", ("nll_loss",), lambda a, t: F.nll_loss(a, t),
         [normal(5, 4), labels(5, 4)], lambda T, TF, a, t: TF.nll_loss(a, t)),
    Case("nll_loss_ignore_weight_sum", ("nll_loss",),
         lambda a, t: F.nll_loss(a, t, weight=np.array([1.0, 2.0, 0.5, 3.0]), ignore_index=2,
                                 reduction="sum"),
         [normal(6, 4), np.array([0, 2, 3, 1, 2, 3])],
         lambda T, TF, a, t: TF.nll_loss(a, t, weight=T.tensor([1.0, 2.0, 0.5, 3.0],
                                         dtype=T.float64), ignore_index=2, reduction="sum")),
    Case("nll_loss_weighted_mean", ("nll_loss",),
         lambda a, t: F.nll_loss(a, t, weight=np.array([1.0, 2.0, 0.5])),
         [normal(5, 3), labels(5, 3, seed=3)],
         lambda T, TF, a, t: TF.nll_loss(a, t, weight=T.tensor([1.0, 2.0, 0.5],
                                         dtype=T.float64))),
    Case("nll_loss_spatial_none", ("nll_loss",), lambda a, t: F.nll_loss(a, t, reduction="none"),
         [normal(2, 3, 2, 2), _rng(5).integers(0, 3, (2, 2, 2))],
         lambda T, TF, a, t: TF.nll_loss(a, t, reduction="none")),
    Case("cross_entropy", ("log_softmax", "nll_loss"), lambda a, t: F.cross_entropy(a, t),
         [normal(6, 5), labels(6, 5)], lambda T, TF, a, t: TF.cross_entropy(a, t)),
    Case("cross_entropy_label_smoothing", ("log_softmax", "nll_loss"),
         lambda a, t: F.cross_entropy(a, t, label_smoothing=0.1, ignore_index=1),
         [normal(6, 5), labels(6, 5, seed=2)],
         lambda T, TF, a, t: TF.cross_entropy(a, t, label_smoothing=0.1, ignore_index=1)),
    Case("cross_entropy_smoothing_weight", ("log_softmax", "nll_loss"),
         lambda a, t: F.cross_entropy(a, t, weight=np.array([0.5, 1.0, 2.0]),
                                      label_smoothing=0.2),
         [normal(5, 3), labels(5, 3, seed=4)],
         lambda T, TF, a, t: TF.cross_entropy(a, t, weight=T.tensor([0.5, 1.0, 2.0],
                                              dtype=T.float64), label_smoothing=0.2)),
    Case("cross_entropy_probabilities", ("log_softmax",), lambda a, p: F.cross_entropy(a, p),
         [normal(4, 3), _rng(3).dirichlet(np.ones(3), 4)],
         lambda T, TF, a, p: TF.cross_entropy(a, p), {"constant": [1]}),
    Case("mse_loss", ("sub", "mul", "mean"), lambda a, b: F.mse_loss(a, b),
         [normal(3, 4), normal(3, 4, seed=1)], lambda T, TF, a, b: TF.mse_loss(a, b)),
    Case("l1_loss_sum", ("abs",), lambda a, b: F.l1_loss(a, b, reduction="sum"),
         [away(3, 4), np.zeros((3, 4))], lambda T, TF, a, b: TF.l1_loss(a, b, reduction="sum")),
    Case("bce_with_logits", ("relu", "abs", "exp", "log"),
         lambda a, y: F.binary_cross_entropy_with_logits(a, y, pos_weight=np.array([2.0, 0.5])),
         [normal(4, 2) * 3, _rng(2).uniform(0, 1, (4, 2))],
         lambda T, TF, a, y: TF.binary_cross_entropy_with_logits(
             a, y, pos_weight=T.tensor([2.0, 0.5], dtype=T.float64))),
    # --- layers ---
    Case("linear", ("linear",), F.linear,
         [normal(4, 3), normal(5, 3, seed=1), normal(5, seed=2)], lambda T, TF, *a: TF.linear(*a)),
    Case("linear_batched_no_bias", ("linear",), F.linear,
         [normal(2, 4, 3), normal(5, 3, seed=1)], lambda T, TF, *a: TF.linear(*a)),
    Case("conv2d", ("conv2d",), lambda x, w, b: F.conv2d(x, w, b, padding=1),
         [normal(2, 2, 5, 5), normal(3, 2, 3, 3, seed=1), normal(3, seed=2)],
         lambda T, TF, x, w, b: TF.conv2d(x, w, b, padding=1)),
    Case("conv2d_stride_dilation", ("conv2d",),
         lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=(2, 1), dilation=2),
         [normal(1, 2, 7, 6), normal(2, 2, 3, 2, seed=1)],
         lambda T, TF, x, w: TF.conv2d(x, w, stride=(2, 1), padding=(2, 1), dilation=2)),
    Case("conv2d_groups", ("conv2d",), lambda x, w, b: F.conv2d(x, w, b, groups=2, stride=2),
         [normal(2, 4, 5, 5), normal(4, 2, 2, 2, seed=1), normal(4, seed=2)],
         lambda T, TF, x, w, b: TF.conv2d(x, w, b, groups=2, stride=2)),
    # max_pool2d's derivative is max_pool2d_select, whose adjoint is max_pool2d_scatter
    Case("max_pool2d", POOL_OPS, lambda x: F.max_pool2d(x, 2), [normal(2, 2, 4, 6)],
         lambda T, TF, x: TF.max_pool2d(x, 2)),
    Case("max_pool2d_stride_pad", POOL_OPS, lambda x: F.max_pool2d(x, 3, 2, 1),
         [normal(1, 2, 5, 5)], lambda T, TF, x: TF.max_pool2d(x, 3, 2, 1)),
    Case("avg_pool2d", ("avg_pool2d",), lambda x: F.avg_pool2d(x, 2, 1, 1),
         [normal(2, 2, 4, 4)], lambda T, TF, x: TF.avg_pool2d(x, 2, 1, 1)),
    Case("avg_pool2d_no_pad_count", ("avg_pool2d",),
         lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False), [normal(1, 2, 5, 6)],
         lambda T, TF, x: TF.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
    Case("adaptive_avg_pool2d", ("adaptive_avg_pool2d",),
         lambda x: F.adaptive_avg_pool2d(x, (3, 2)), [normal(2, 2, 5, 7)],
         lambda T, TF, x: TF.adaptive_avg_pool2d(x, (3, 2))),
    Case("adaptive_avg_pool2d_global", ("adaptive_avg_pool2d",),
         lambda x: F.adaptive_avg_pool2d(x, 1), [normal(2, 3, 3, 4)],
         lambda T, TF, x: TF.adaptive_avg_pool2d(x, 1)),
    Case("batch_norm_train_4d", ("batch_norm",),
         lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
         [normal(3, 2, 2, 3), positive(2, seed=1), normal(2, seed=2)],
         lambda T, TF, x, w, b: TF.batch_norm(x, None, None, w, b, training=True)),
    Case("batch_norm_train_2d", ("batch_norm",),
         lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True, eps=1e-3),
         [normal(5, 3), positive(3, seed=1), normal(3, seed=2)],
         lambda T, TF, x, w, b: TF.batch_norm(x, None, None, w, b, training=True, eps=1e-3)),
    Case("batch_norm_eval", ("batch_norm",),
         lambda x, w, b: F.batch_norm(x, np.array([0.1, -0.2]), np.array([0.5, 2.0]), w, b),
         [normal(3, 2, 2, 2), positive(2, seed=1), normal(2, seed=2)],
         lambda T, TF, x, w, b: TF.batch_norm(x, T.tensor([0.1, -0.2], dtype=T.float64),
                                              T.tensor([0.5, 2.0], dtype=T.float64), w, b)),
    Case("layer_norm", ("mean", "sub", "mul", "sqrt", "div"),
         lambda x, w, b: F.layer_norm(x, (3, 4), w, b),
         [normal(2, 3, 4), positive(3, 4, seed=1), normal(3, 4, seed=2)],
         lambda T, TF, x, w, b: TF.layer_norm(x, (3, 4), w, b)),
    Case("embedding", ("embedding",), lambda w, i: F.embedding(i, w),
         [normal(5, 3), np.array([[0, 4, 0], [2, 2, 1]])],
         lambda T, TF, w, i: TF.embedding(i, w)),
    # --- the linear primitives derivatives are made of (squared, so second order sees them) ---
    Case("im2col", ("im2col",), lambda x: im2col(x) ** 2, [normal(2, 3, 4, 5)],
         lambda T, TF, x: torch_im2col(TF, x) ** 2),
    Case("col2im", ("col2im",), lambda c: col2im(c) ** 2, [normal(2 * 10, 4 * 3)],
         lambda T, TF, c: torch_col2im(TF, c) ** 2),
    Case("scatter_add_repeats", ("scatter_add",),
         lambda g: apply(REGISTRY["scatter_add"], [g], shape=(3, 4), index=SCATTER_INDEX) ** 2,
         [normal(4)], lambda T, TF, g: T.zeros(3, 4, dtype=T.float64).index_put(
             tuple(T.from_numpy(i) for i in SCATTER_INDEX), g, accumulate=True) ** 2),
    Case("scatter_add_basic", ("scatter_add",),
         lambda g: apply(REGISTRY["scatter_add"], [g], shape=(3, 4, 2),
                         index=(slice(1, 3), 2)) ** 3,
         [normal(2, 2)], lambda T, TF, g: TF.pad(g.unsqueeze(1), (0, 0, 2, 1, 1, 0)) ** 3),
    Case("cast", ("cast",), lambda a: a.double() ** 3, [normal(3)],
         lambda T, TF, a: a.double() ** 3),
]  # fmt: skip

CASE_IDS = [c.id for c in CASES]
NON_DIFFERENTIABLE = {name for name, p in REGISTRY.items() if not p.differentiable}


def float_args(case: Case) -> list[int]:
    skip = set(case.extra.get("constant", []))
    return [i for i, a in enumerate(case.inputs) if a.dtype.kind == "f" and i not in skip]


def partial_fn(case: Case):
    """The case's function of its differentiable inputs only (others held fixed)."""
    wrt = float_args(case)

    def fn(*xs):
        args = [Tensor(a) for a in case.inputs]
        for i, x in zip(wrt, xs, strict=True):
            args[i] = x
        return case.fn(*args)

    return fn, [case.inputs[i] for i in wrt]


def test_registry_is_complete():
    """Every primitive has its forward and lowering, and a differentiable one the single
    derivative rule its form asks for (scale, transpose or jvp), defined by itself."""
    assert len(REGISTRY) >= 45
    for name, prim in REGISTRY.items():
        assert prim.name == name
        assert issubclass(prim, Primitive)
        for rule in RULES:
            assert callable(prim.__dict__[rule].__func__), f"{name}.{rule}"
        if prim.differentiable:
            assert prim.derivative in DERIVATIVE_RULES
            rule = getattr(prim, prim.derivative)
            assert callable(rule) and prim.derivative in prim.__dict__, f"{name} derivative"


def test_every_differentiable_primitive_has_a_case():
    covered = {op for case in CASES for op in case.ops}
    missing = set(REGISTRY) - covered - NON_DIFFERENTIABLE
    assert not missing, f"primitives without a gradcheck case: {sorted(missing)}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradcheck(case: Case):
    fn, inputs = partial_fn(case)
    assert gradcheck(fn, inputs)  # reverse mode and forward mode against central differences


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_mode_matches_reverse_mode(case: Case):
    """J v from one dual-number pass equals the Jacobian assembled row by row from VJPs."""
    fn, inputs = partial_fn(case)
    rng = np.random.default_rng(7)
    leaves = [Tensor(a.copy(), requires_grad=True) for a in inputs]
    out = fn(*leaves)
    rows = []
    for j in range(out.data.size):
        for leaf in leaves:
            leaf.grad = None
        e = np.zeros(out.data.size)
        e[j] = 1
        backward([out], [e.reshape(out.shape)])
        rows.append(
            np.concatenate(
                [
                    (leaf.grad if leaf.grad is not None else np.zeros_like(leaf.data)).ravel()
                    for leaf in leaves
                ]  # fmt: skip
            )
        )
    jac = np.stack(rows)
    tangents = [rng.standard_normal(a.shape) for a in inputs]
    with dual_level():
        duals = [make_dual(a, t) for a, t in zip(inputs, tangents, strict=True)]
        dual_out = fn(*duals)
    jv = dual_out.tangent.ravel()
    expected = jac @ np.concatenate([t.ravel() for t in tangents])
    np.testing.assert_allclose(jv, expected, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dual_out.data, out.data, rtol=1e-12)


COMPARISONS = {
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMPARISONS))
def test_comparisons_are_boolean_and_not_differentiable(name):
    a = Tensor(np.array([[1.0, 2.0, 3.0]]), requires_grad=True)
    b = Tensor(np.array([[2.0], [1.0]]))
    method = {"eq": "__eq__", "ne": "__ne__", "lt": "__lt__", "le": "__le__", "gt": "__gt__",
              "ge": "__ge__"}[name]  # fmt: skip
    out = getattr(a, method)(b)
    assert out.dtype == np.bool_ and not out.requires_grad
    np.testing.assert_array_equal(out.data, COMPARISONS[name](a.data, b.data))
    assert not REGISTRY[name].differentiable


def test_cast_gradient_returns_in_the_input_dtype():
    x = Tensor(np.array([1.5, -2.0], dtype=np.float64), requires_grad=True)
    y = x.float()
    assert y.dtype == np.float32
    (y * y).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad, [3.0, -4.0])
    ints = x.long()
    assert ints.dtype == np.int64 and not ints.requires_grad
    np.testing.assert_array_equal(ints.data, [1, -2])


def test_cast_pushes_tangents_between_float_dtypes():
    with dual_level():
        x = make_dual(np.array([1.0, 2.0]), np.array([0.5, -1.0]))
        y = x.astype(np.float32) * 2.0
    assert y.tangent.dtype == np.float32
    np.testing.assert_allclose(y.tangent, [1.0, -2.0])


def test_detach_and_argmax_carry_no_gradient():
    x = Tensor(np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 1.0]]), requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and np.shares_memory(d.data, x.data)
    idx = x.argmax(1)
    np.testing.assert_array_equal(idx.data, [1, 0])
    assert idx.dtype.kind == "i" and not idx.requires_grad
    (x * d).sum().backward()
    np.testing.assert_allclose(x.grad, x.data)  # d counted as a constant


def test_max_splits_gradient_between_ties_like_amax():
    x = Tensor(np.array([[2.0, 2.0, 1.0]]), requires_grad=True)
    x.max(1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0.5, 0.5, 0.0]])


def test_maximum_ties_share_the_gradient():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([1.0, 3.0]), requires_grad=True)
    engine.maximum(a, b).sum().backward()
    np.testing.assert_allclose(a.grad, [0.5, 0.0])
    np.testing.assert_allclose(b.grad, [0.5, 1.0])


def test_max_pool_after_relu_sends_gradient_to_one_element_of_a_tied_window():
    x = Tensor(np.zeros((1, 1, 2, 2)), requires_grad=True)
    F.max_pool2d(F.relu(x) + 0.0, 2).sum().backward()
    assert x.grad.sum() == 0.0  # relu'(0) = 0
    y = Tensor(np.zeros((1, 1, 2, 2)), requires_grad=True)
    F.max_pool2d(y, 2).sum().backward()
    np.testing.assert_allclose(y.grad, [[[[1.0, 0.0], [0.0, 0.0]]]])


def test_erf_matches_math_erf_to_float64_precision():
    import math

    from engine.ops._util import erf

    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, 1e-300, -1e-8, 30.0, -30.0]])
    ref = np.array([math.erf(v) for v in x])
    err = np.abs(erf(x) - ref) / np.maximum(np.abs(ref), 1e-300)
    assert err.max() < 1e-14


def test_float32_stays_float32_through_the_hot_path():
    x = engine.randn(8, 6)
    w = engine.Parameter(engine.randn(4, 6).data)
    b = engine.Parameter(engine.zeros(4).data)
    conv_w = engine.Parameter(engine.randn(2, 1, 3, 3).data)
    img = engine.randn(2, 1, 6, 6)
    h = F.max_pool2d(F.relu(F.conv2d(img, conv_w, padding=1)), 2)
    out = F.linear(F.relu(x * 2.0 + 1.0), w, b)
    loss = F.cross_entropy(out, np.array([0, 1, 2, 3] * 2)) + h.mean() * 0.5
    assert loss.dtype == np.float32
    loss.backward()
    for p in (w, b, conv_w):
        assert p.grad.dtype == np.float32, p.grad.dtype


def test_dropout_scales_kept_units_and_is_seeded():
    x = engine.ones(1000)
    engine.manual_seed(3)
    a = F.dropout(x, 0.25)
    engine.manual_seed(3)
    b = F.dropout(x, 0.25)
    np.testing.assert_array_equal(a.data, b.data)
    kept = a.data[a.data != 0]
    np.testing.assert_allclose(kept, 1 / 0.75)
    assert 650 < kept.size < 850
    assert F.dropout(x, 0.25, training=False) is x


def test_dropout_gradcheck_with_a_fixed_mask():
    def fn(x):
        engine.manual_seed(11)
        return F.dropout(x, 0.4)

    assert gradcheck(fn, [normal(3, 5)])


def test_batch_norm_updates_running_statistics_like_torch():
    x = normal(6, 3, 2, 2)
    rm, rv = engine.zeros(3, dtype=np.float64), engine.ones(3, dtype=np.float64)
    F.batch_norm(Tensor(x), rm, rv, training=True, momentum=0.2)
    axes = (0, 2, 3)
    np.testing.assert_allclose(rm.data, 0.2 * x.mean(axes))
    np.testing.assert_allclose(rv.data, 0.8 + 0.2 * x.var(axes, ddof=1))


def test_clear_errors_for_bad_input():
    with pytest.raises(ValueError, match="3 channels"):
        F.conv2d(engine.zeros(1, 3, 4, 4), engine.zeros(2, 2, 3, 3))
    with pytest.raises(IndexError, match="out of range"):
        F.nll_loss(engine.zeros(2, 3), np.array([0, 3]))
    with pytest.raises(ValueError, match="reshape"):
        engine.zeros(2, 3).reshape(4, 2)
    with pytest.raises(TypeError, match="integers"):
        F.nll_loss(engine.zeros(2, 3), np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="probability targets"):
        F.cross_entropy(engine.zeros(2, 3), np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="more than once"):
        engine.zeros(2, 3).sum((0, -2))
    with pytest.raises(IndexError, match="out of range"):
        engine.zeros(2, 3).mean(2)
    with pytest.raises(ValueError, match="reduction"):
        F.mse_loss(engine.zeros(2), engine.zeros(2), reduction="avg")


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (2, 1, 0)])
def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window(kernel, stride, padding):
    """Against a loop-by-window reference, with ties (odd sizes crop like torch's floor)."""
    rng = np.random.default_rng(5)
    x = np.round(rng.standard_normal((2, 3, 7, 9)), 1)  # rounding makes ties likely
    x[0, 0, :3, :3] = 0.0
    t = Tensor(x, requires_grad=True)
    out = F.max_pool2d(t, kernel, stride, padding)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)),
                constant_values=-np.inf)  # fmt: skip
    ref = np.zeros_like(xp)
    for n, c, i, j in np.ndindex(*out.shape):
        win = xp[n, c, i * stride : i * stride + kernel, j * stride : j * stride + kernel]
        r, q = np.unravel_index(np.argmax(win), win.shape)
        assert out.data[n, c, i, j] == win[r, q]
        ref[n, c, i * stride + r, j * stride + q] += g[n, c, i, j]
    np.testing.assert_allclose(t.grad, ref[:, :, padding : padding + 7, padding : padding + 9])
