"""Engine models covering every primitive and every module type, for the export parity tests.

Each case is a name, a model factory and an example input (batch 3); a case that calls a
functional op wraps it in `Fn`, a real engine Module, so the op is traced inside a module scope.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import engine
import engine.nn as nn
from engine import functional as F
from engine.ops import REGISTRY
from engine.tensor import apply

EXAMPLE_BATCH = 3


class Fn(nn.Module):
    """A module whose forward is a function of its input (ops traced inside its scope)."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class TwoBranch(nn.Module):
    """A custom module with a ModuleList and a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Linear(6, 6), nn.Sequential(nn.Linear(6, 6), nn.Tanh())])
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(x + sum((b(x) for b in self.branches[1:]), self.branches[0](x)))


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    sample_shape: tuple[int, ...]
    integer_range: int | None = None  # integer inputs in [0, n) (embedding indices)

    def example(self, batch: int = EXAMPLE_BATCH, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        shape = (batch, *self.sample_shape)
        if self.integer_range:
            return rng.integers(0, self.integer_range, size=shape).astype(np.int64)
        return rng.standard_normal(shape).astype(np.float32)


def const(*shape: int) -> engine.Tensor:
    return engine.Tensor(np.random.default_rng(7).standard_normal(shape).astype(np.float32))


WINDOW = {"kernel": (3, 2), "stride": (2, 1), "padding": (1, 1), "dilation": (1, 2)}


def im2col(x):
    return apply(REGISTRY["im2col"], [x], **WINDOW)


def col2im(cols, shape):
    return apply(REGISTRY["col2im"], [cols], x_shape=tuple(shape), **WINDOW)


def scatter_add(g, shape):
    """g added back at x[:, 1:3, 1] of a zero tensor shaped like x (getitem's adjoint)."""
    return apply(REGISTRY["scatter_add"], [g], shape=tuple(shape), index=(slice(None),
                 slice(1, 3), 1))  # fmt: skip


def fn(name: str, f: Callable, *sample_shape: int) -> Case:
    return Case(name, lambda: Fn(f), sample_shape or (4,))


def with_stats(bn: nn.Module) -> nn.Module:
    """BatchNorm with non-trivial running statistics and affine parameters (so folding shows)."""
    rng = np.random.default_rng(3)
    n = bn.running_mean.data.shape[0]
    bn.running_mean.data[...] = rng.standard_normal(n)
    bn.running_var.data[...] = rng.uniform(0.5, 2.0, n)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, n)
    bn.bias.data[...] = rng.standard_normal(n)
    return bn


OP_CASES = [
    fn("add", lambda x: x + const(4) + 1.5),
    fn("sub", lambda x: 2.0 - x - const(4)),
    fn("mul", lambda x: x * x * 0.5),
    fn("div", lambda x: x / (x.abs() + 1.0) + 1.0 / (x * x + 2.0)),
    fn("pow", lambda x: x**2 + (x.abs() + 1.0) ** 0.5 + 2.0 ** x.clip(-1, 1)),
    fn("maximum_minimum", lambda x: engine.maximum(x, 0.3) + engine.minimum(x, x * 0.5)),
    fn("neg_exp_log_sqrt", lambda x: -x.exp() + (x.abs() + 1.0).log() + (x.abs() + 0.1).sqrt()),
    fn("tanh_sigmoid_relu", lambda x: x.tanh() + x.sigmoid() + x.relu()),
    fn("leaky_relu", lambda x: F.leaky_relu(x, 0.2)),
    fn("erf", lambda x: engine.erf(x)),
    fn("gelu", lambda x: F.gelu(x)),
    fn("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
    fn("clip", lambda x: x.clip(-0.5, 0.5) + x.clip(min=0.1)),
    fn(
        "compare_where",
        lambda x: (
            engine.where(x > 0, x, x * 0.1)
            + engine.where(x >= 0.5, 1.0, 0.0)
            + engine.where(x < -0.5, x, 0.0)
            + engine.where(x <= 0.2, 2.0, x)
            + engine.where(x == x, 1.0, 0.0)
            + engine.where(x != 0.0, 1.0, 0.0)
        ),
    ),
    fn("cast", lambda x: (x * 3).long().float() + x.astype(np.float64).float()),
    fn("float64_output", lambda x: x.double() * 2.0),
    fn("detach", lambda x: x.detach() * 2.0),
    fn("matmul", lambda x: x @ const(4, 3)),
    fn("batched_matmul", lambda x: x @ const(4, 3), 2, 4),
    fn("linear", lambda x: F.linear(x, const(5, 4), const(5))),
    fn("softmax_log_softmax", lambda x: F.softmax(x, dim=1) + F.log_softmax(x, dim=-1)),
    fn(
        "nll_loss", lambda x: F.nll_loss(F.log_softmax(x, dim=1), x.argmax(dim=1), reduction="none")
    ),
    fn("cross_entropy_mean", lambda x: F.cross_entropy(x, x.argmax(dim=1))),
    fn(
        "sum_mean",
        lambda x: x.sum(dim=1) + x.mean(dim=1) + x.sum() + x.mean(dim=(1, 2)).unsqueeze(1),
        2,
        3,
    ),
    fn("max_argmax", lambda x: x.max(dim=1) + x.argmax(dim=1).float()),
    fn("var_std", lambda x: x.var(dim=1) + x.std(dim=1)),
    fn("reshape_transpose", lambda x: x.reshape(-1, 2, 2).transpose(1, 2).reshape(-1, 4)),
    fn("permute_flatten", lambda x: x.permute(0, 2, 3, 1).flatten(1), 2, 3, 4),
    fn("broadcast_to", lambda x: x[:, :1].broadcast_to((x.shape[0], 4)) + x),
    fn("squeeze_unsqueeze", lambda x: x.unsqueeze(1).unsqueeze(-1).squeeze(-1).squeeze(1)),
    fn(
        "concat_stack", lambda x: engine.cat([x, x * 2], dim=1) + engine.stack([x, x], 1).flatten(1)
    ),
    fn("getitem", lambda x: x[:, 1:3] + x[:, [0, 3]] + x[:, -1:] + x[:, 0].unsqueeze(1)),
    fn("pad", lambda x: F.pad(x, (1, 2, 0, 1)), 1, 3, 3),
    # the linear primitives gradients are made of (exported when a model's output differentiates)
    fn("im2col_col2im", lambda x: col2im(im2col(x) * 0.5, x.shape), 2, 5, 6),
    fn("scatter_add", lambda x: scatter_add(x[:, 1:3, 1], x.shape), 4, 3, 2),
]

MODULE_CASES = [
    Case("Linear", lambda: nn.Linear(4, 5), (4,)),
    Case("Linear_no_bias", lambda: nn.Linear(4, 5, bias=False), (4,)),
    Case("Conv2d", lambda: nn.Conv2d(2, 4, 3, padding=1), (2, 6, 6)),
    Case(
        "Conv2d_strided_grouped",
        lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, dilation=1, groups=2, bias=False),
        (4, 7, 7),
    ),  # fmt: skip
    Case("Conv2d_dilated", lambda: nn.Conv2d(2, 3, 3, dilation=2), (2, 7, 7)),
    Case("MaxPool2d", lambda: nn.MaxPool2d(2), (2, 6, 6)),
    Case("MaxPool2d_padded", lambda: nn.MaxPool2d(3, stride=2, padding=1), (1, 7, 7)),
    Case("AvgPool2d", lambda: nn.AvgPool2d(2), (2, 6, 6)),
    Case("AdaptiveAvgPool2d_global", lambda: nn.AdaptiveAvgPool2d(1), (3, 4, 4)),
    Case("AdaptiveAvgPool2d_2x2", lambda: nn.AdaptiveAvgPool2d((2, 2)), (3, 4, 4)),
    Case("Flatten", lambda: nn.Flatten(), (2, 3, 4)),
    Case("Dropout", lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)), (4,)),
    Case("Identity", lambda: nn.Sequential(nn.Identity(), nn.ReLU()), (4,)),
    Case("Embedding", lambda: nn.Embedding(10, 3), (5,), integer_range=10),
    Case(
        "BatchNorm1d", lambda: nn.Sequential(nn.Linear(4, 6), with_stats(nn.BatchNorm1d(6))), (4,)
    ),
    Case(
        "BatchNorm2d",
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3), with_stats(nn.BatchNorm2d(4))),
        (2, 5, 5),
    ),  # fmt: skip
    Case("BatchNorm2d_alone", lambda: with_stats(nn.BatchNorm2d(2)), (2, 3, 3)),
    Case("LayerNorm", lambda: nn.LayerNorm(6), (6,)),
    Case("LayerNorm_2d", lambda: nn.LayerNorm((3, 4)), (2, 3, 4)),
    Case("LSTM", lambda: nn.LSTM(5, 6), (4, 5)),
    Case("LSTM_two_layers", lambda: nn.LSTM(3, 4, num_layers=2), (3, 3)),
    Case("ReLU", lambda: nn.ReLU(), (4,)),
    Case("LeakyReLU", lambda: nn.LeakyReLU(0.1), (4,)),
    Case("GELU", lambda: nn.GELU(), (4,)),
    Case("Sigmoid", lambda: nn.Sigmoid(), (4,)),
    Case("Tanh", lambda: nn.Tanh(), (4,)),
    Case("Softmax", lambda: nn.Softmax(dim=1), (4,)),
    Case("LogSoftmax", lambda: nn.LogSoftmax(dim=1), (4,)),
    Case("ModuleList_custom", TwoBranch, (6,)),
    Case(
        "Sequential_cnn",
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            with_stats(nn.BatchNorm2d(4)),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(16 * 4, 8),
            with_stats(nn.BatchNorm1d(8)),
            nn.ReLU(),
            nn.Linear(8, 3),
        ),  # fmt: skip
        (1, 8, 8),
    ),
]

ALL_CASES = OP_CASES + MODULE_CASES
