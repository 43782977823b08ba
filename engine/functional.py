"""The functional API, named and shaped like torch.nn.functional (plus torch's top-level ops).

Fused primitives (softmax, log_softmax, nll_loss, conv2d, pooling, batch_norm, embedding) do the
heavy lifting; the rest are composites of primitives, so they differentiate, push tangents and
export without rules of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.ops import REGISTRY as P
from engine.random import generator
from engine.tensor import Tensor, apply, apply_saving

# --- helpers ------------------------------------------------------------------------------


def _t(x: Any, like: Tensor | None = None) -> Tensor:
    """A Tensor for x; scalars take `like`'s dtype so float32 stays float32."""
    if isinstance(x, Tensor):
        return x
    if like is not None and not isinstance(x, np.ndarray):
        return like._lift(x)
    return Tensor(x)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    a, b = v
    return (int(a), int(b))


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


# --- torch top-level ops ------------------------------------------------------------------


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return apply(P["matmul"], [_t(a), _t(b)])


def concat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join tensors along an existing dimension (torch.cat)."""
    ts = [_t(t) for t in tensors]
    if not ts:
        raise ValueError("concat needs at least one tensor")
    return apply(P["concat"], ts, axis=dim % ts[0].ndim)


cat = concat


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    """Join tensors along a new dimension."""
    ts = [_t(t) for t in tensors]
    if not ts:
        raise ValueError("stack needs at least one tensor")
    return concat([t.unsqueeze(dim) for t in ts], dim % (ts[0].ndim + 1))


def where(condition: Any, a: Any, b: Any) -> Tensor:
    """condition ? a : b, element-wise with broadcasting; a and b may be scalars."""
    like = a if isinstance(a, Tensor) else b if isinstance(b, Tensor) else None
    cond = condition if isinstance(condition, Tensor) else Tensor(np.asarray(condition))
    if cond.dtype != np.bool_:
        cond = cond.astype(np.bool_)
    return apply(P["where"], [cond, _t(a, like), _t(b, like)])


def maximum(a: Any, b: Any) -> Tensor:
    like = a if isinstance(a, Tensor) else b
    return apply(P["maximum"], [_t(a, like), _t(b, like)])


def minimum(a: Any, b: Any) -> Tensor:
    like = a if isinstance(a, Tensor) else b
    return apply(P["minimum"], [_t(a, like), _t(b, like)])


def exp(x: Tensor) -> Tensor:
    return _t(x).exp()


def log(x: Tensor) -> Tensor:
    return _t(x).log()


def sqrt(x: Tensor) -> Tensor:
    return _t(x).sqrt()


def erf(x: Tensor) -> Tensor:
    return apply(P["erf"], [_t(x)])


def clip(x: Tensor, min: float | None = None, max: float | None = None) -> Tensor:
    return _t(x).clip(min, max)


clamp = clip


# --- activations --------------------------------------------------------------------------


def relu(x: Tensor) -> Tensor:
    return apply(P["relu"], [x])


def leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    return apply(P["leaky_relu"], [x], negative_slope=float(negative_slope))


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x) with the exact erf (default, like torch) or the tanh approximation."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', not {approximate!r}")
    return apply(P["gelu"], [x], approximate=approximate)


def sigmoid(x: Tensor) -> Tensor:
    return apply(P["sigmoid"], [x])


def tanh(x: Tensor) -> Tensor:
    return apply(P["tanh"], [x])


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    return apply(P["softmax"], [x], axis=dim % x.ndim)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    return apply(P["log_softmax"], [x], axis=dim % x.ndim)


# --- layers -------------------------------------------------------------------------------


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, weight shaped [out, in] like torch."""
    return apply(P["linear"], [x, weight] if bias is None else [x, weight, bias])


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:  # fmt: skip
    """2-D convolution over (N, C, H, W); padding may be an int, a pair, 'valid' or 'same'."""
    if x.ndim == 3:
        return conv2d(x.unsqueeze(0), weight, bias, stride, padding, dilation, groups).squeeze(0)
    stride, dilation = _pair(stride), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = 0
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' needs stride 1")
            total = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
            if any(t % 2 for t in total):
                x = pad(x, (0, total[1] % 2, 0, total[0] % 2))
            padding = (total[0] // 2, total[1] // 2)
        else:
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', not {padding!r}")
    inputs = [x, weight] + ([bias] if bias is not None else [])
    return apply(P["conv2d"], inputs, stride=stride, padding=_pair(padding), dilation=dilation,
                 groups=int(groups))  # fmt: skip


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0) -> Tensor:
    k = _pair(kernel_size)
    s = k if stride is None else _pair(stride)
    return apply(P["max_pool2d"], [x], kernel_size=k, stride=s, padding=_pair(padding))


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0,
               count_include_pad: bool = True) -> Tensor:  # fmt: skip
    k = _pair(kernel_size)
    s = k if stride is None else _pair(stride)
    return apply(P["avg_pool2d"], [x], kernel_size=k, stride=s, padding=_pair(padding),
                 count_include_pad=bool(count_include_pad))  # fmt: skip


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    if isinstance(output_size, (int, np.integer)):
        size = (int(output_size), int(output_size))
    else:
        size = tuple(x.shape[2 + i] if n is None else int(n) for i, n in enumerate(output_size))
    return apply(P["adaptive_avg_pool2d"], [x], output_size=size)


def _param(value: Any, fill: float, channels: int, dtype) -> Tensor:
    if value is None:
        return Tensor(np.full((channels,), fill, dtype=dtype))
    return _t(value)


def batch_norm(x: Tensor, running_mean: Any, running_var: Any, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> Tensor:  # fmt: skip
    """Batch normalisation over dim 1 of (N, C, ...); training updates the running statistics
    in place (unbiased variance, like torch)."""
    c = x.shape[1]
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm in eval mode needs running_mean and running_var")
    w = _param(weight, 1.0, c, x.dtype)
    b = _param(bias, 0.0, c, x.dtype)
    rm = _param(running_mean, 0.0, c, x.dtype)
    rv = _param(running_var, 1.0, c, x.dtype)
    out, saved = apply_saving(P["batch_norm"], [x, w, b, rm, rv], training=bool(training),
                              eps=float(eps))  # fmt: skip
    if training and running_mean is not None and running_var is not None:
        n = x.data.size // c
        if n < 2:
            raise ValueError(f"batch_norm training needs more than 1 value per channel, got {n}")
        _, _, mean, var = saved
        m = momentum
        rm.data[...] = (1 - m) * rm.data + m * mean
        rv.data[...] = (1 - m) * rv.data + m * var * (n / (n - 1))
    return out


def layer_norm(x: Tensor, normalized_shape, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:  # fmt: skip
    """Normalise over the trailing `normalized_shape` dims (a composite of primitives)."""
    if isinstance(normalized_shape, (int, np.integer)):
        normalized_shape = (int(normalized_shape),)
    k = len(normalized_shape)
    if tuple(x.shape[-k:]) != tuple(normalized_shape):
        raise ValueError(f"layer_norm: input {x.shape} does not end in {tuple(normalized_shape)}")
    axes = tuple(range(x.ndim - k, x.ndim))
    centred = x - x.mean(axes, keepdim=True)
    var = (centred * centred).mean(axes, keepdim=True)
    out = centred / (var + eps).sqrt()
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = generator().random(x.shape, dtype=np.float32) >= p
    mask = keep.astype(x.dtype) * np.asarray(1.0 / (1.0 - p), dtype=x.dtype)
    return x * Tensor(mask)


def embedding(indices: Any, weight: Tensor) -> Tensor:
    """Rows of weight [num_embeddings, dim] for integer indices of any shape."""
    idx = indices if isinstance(indices, Tensor) else Tensor(np.asarray(indices))
    return apply(P["embedding"], [weight, idx])


def pad(x: Tensor, pad: Sequence[int], mode: str = "constant", value: float = 0.0) -> Tensor:
    """torch.nn.functional.pad: `pad` lists (before, after) pairs starting from the last dim."""
    if mode != "constant":
        raise NotImplementedError(f"pad mode {mode!r}: only 'constant' is supported")
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad needs pairs for at most {x.ndim} dims, got {tuple(pad)}")
    pads = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        pads[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    return apply(P["pad"], [x], pads=tuple(pads), value=float(value))


# --- losses -------------------------------------------------------------------------------


def _target(target: Any) -> Tensor:
    t = target if isinstance(target, Tensor) else Tensor(np.asarray(target))
    if t.dtype.kind not in "iu":
        raise TypeError(f"class targets must be integers, got {t.dtype}")
    return t


def nll_loss(logp: Tensor, target: Any, weight: Any = None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:  # fmt: skip
    """Negative log-likelihood of integer class targets given log-probabilities (N, C, ...)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    t = _target(target)
    if t.shape != (logp.shape[0],) + logp.shape[2:]:
        raise ValueError(f"nll_loss: target shape {t.shape} does not match input {logp.shape}")
    w = None if weight is None else np.asarray(getattr(weight, "data", weight), logp.dtype)
    return apply(P["nll_loss"], [logp, t], reduction=reduction, ignore_index=int(ignore_index),
                 weight=w)  # fmt: skip


def cross_entropy(logits: Tensor, target: Any, weight: Any = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:  # fmt: skip
    """log_softmax + nll_loss over dim 1; float targets of the input's shape are probabilities."""
    logp = log_softmax(logits, 1)
    tgt = target if isinstance(target, Tensor) else Tensor(np.asarray(target))
    c = logits.shape[1]
    if tgt.dtype.kind == "f":  # class probabilities
        if tgt.shape != logits.shape:
            raise ValueError(f"probability targets {tgt.shape} must match input {logits.shape}")
        if label_smoothing:
            tgt = tgt * (1 - label_smoothing) + label_smoothing / c
        terms = logp * tgt
        if weight is not None:
            terms = terms * _t(weight).reshape((1, c) + (1,) * (logits.ndim - 2))
        return _reduce(-terms.sum(1), reduction)
    nll = nll_loss(logp, tgt, weight, ignore_index, reduction)
    if not label_smoothing:
        return nll
    keep = (tgt.data != ignore_index).astype(logits.dtype)
    if weight is not None:
        wv = np.asarray(getattr(weight, "data", weight), logits.dtype)
        per = -(logp * Tensor(wv.reshape((1, c) + (1,) * (logits.ndim - 2)))).sum(1)
        denom = (wv[np.where(keep > 0, tgt.data, 0)] * keep).sum()
    else:
        per = -logp.sum(1)
        denom = keep.sum()
    per = per * Tensor(keep)
    if reduction == "none":
        smooth = per
    elif reduction == "sum":
        smooth = per.sum()
    else:
        smooth = per.sum() / float(denom)
    return nll * (1 - label_smoothing) + smooth * (label_smoothing / c)


def mse_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    diff = input - _t(target, input)
    return _reduce(diff * diff, reduction)


def l1_loss(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:
    return _reduce((input - _t(target, input)).abs(), reduction)


def binary_cross_entropy_with_logits(
    input: Tensor, target: Any, weight: Any = None, reduction: str = "mean", pos_weight: Any = None
) -> Tensor:
    """Numerically stable BCE on logits: relu(x) - x*y + log(1 + exp(-|x|))."""
    y = _t(target, input)
    softplus_neg = (1.0 + (-input.abs()).exp()).log() + relu(-input)  # log(1 + exp(-x))
    if pos_weight is not None:
        loss = (1.0 - y) * input + (1.0 + (_t(pos_weight, input) - 1.0) * y) * softplus_neg
    else:
        loss = (1.0 - y) * input + softplus_neg
    if weight is not None:
        loss = loss * _t(weight, input)
    return _reduce(loss, reduction)


__all__ = [
    "matmul", "concat", "cat", "stack", "where", "maximum", "minimum", "exp", "log", "sqrt",
    "erf", "clip", "clamp", "relu", "leaky_relu", "gelu", "sigmoid", "tanh", "softmax",
    "log_softmax", "linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
    "batch_norm", "layer_norm", "dropout", "embedding", "pad", "nll_loss", "cross_entropy",
    "mse_loss", "l1_loss", "binary_cross_entropy_with_logits",
]  # fmt: skip
