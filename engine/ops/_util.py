"""Helpers shared by the primitive rules: broadcasting, erf, and ONNX building blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

INT64_MAX = np.iinfo(np.int64).max


def norm_axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """Non-negative, sorted reduction axes; None means all axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    for a in axis:
        if not -max(ndim, 1) <= a < max(ndim, 1):
            raise IndexError(f"dimension {a} is out of range for a tensor with {ndim} dims")
    out = [int(a) % ndim if ndim else 0 for a in axis]
    if len(set(out)) != len(out):
        raise ValueError(f"dimensions {tuple(axis)} name the same axis more than once")
    return tuple(sorted(out))


def is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f"


# erf: W. J. Cody / Cephes rational approximations (relative error about 1e-16 in float64).
_T = (9.60497373987051638749e0, 9.00260197203842689217e1, 2.23200534594684319226e3,
      7.00332514112805075473e3, 5.55923013010394962768e4)  # fmt: skip
_U = (1.0, 3.35617141647503099647e1, 5.21357949780152679795e2, 4.59432382970980127987e3,
      2.26290000613890934246e4, 4.92673942608635921086e4)  # fmt: skip
_P = (2.46196981473530512524e-10, 5.64189564831068821977e-1, 7.46321056442269912687e0,
      4.86371970985681366614e1, 1.96520832956077098242e2, 5.26445194995477358631e2,
      9.34528527171957607540e2, 1.02755188689515710272e3, 5.57535335369399327526e2)  # fmt: skip
_Q = (1.0, 1.32281951154744992508e1, 8.67072140885989742329e1, 3.54937778887819891062e2,
      9.75708501743205489753e2, 1.82390916687909736289e3, 2.24633760818710981792e3,
      1.65666309194161350182e3, 5.57535340817727675546e2)  # fmt: skip
_R = (5.64189583547755073984e-1, 1.27536670759978104416e0, 5.01905042251180477414e0,
      6.16021097993053585195e0, 7.40974269950448939160e0, 2.97886665372100240670e0)  # fmt: skip
_S = (1.0, 2.26052863220117276590e0, 9.39603524938001434673e0, 1.20489539808096656605e1,
      1.70814450747565897222e1, 9.60896809063285878198e0, 3.36907645100081516050e0)  # fmt: skip

TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _poly(x: np.ndarray, coefs: Sequence[float]) -> np.ndarray:
    acc = np.full_like(x, coefs[0])
    for c in coefs[1:]:
        acc = acc * x + c
    return acc


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorised erf, accurate to about 1e-16 relative in float64 (numpy has none)."""
    x = np.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.float64
    z = x.astype(np.float64)
    a = np.abs(z)
    out = np.empty_like(z)
    small = a <= 1.0
    if small.any():
        zs = z[small]
        z2 = zs * zs
        out[small] = zs * _poly(z2, _T) / _poly(z2, _U)
    big = ~small
    if big.any():
        ab = np.minimum(a[big], 27.0)
        mid = ab < 8.0
        ratio = np.where(mid, _poly(ab, _P) / _poly(ab, _Q), _poly(ab, _R) / _poly(ab, _S))
        erfc = np.exp(-ab * ab) * ratio
        out[big] = np.copysign(1.0 - erfc, z[big])
    return out.astype(dtype, copy=False)


# ONNX building blocks -------------------------------------------------------------------


def onnx_dtype(dtype: np.dtype) -> int:
    """The ONNX TensorProto element type of a numpy dtype."""
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def onnx_axes(ctx, axes: Sequence[int]) -> str:
    return ctx.const(np.asarray(list(axes), dtype=np.int64), "axes")


def onnx_reduce(ctx, op: str, x: str, axes: tuple[int, ...] | None, keepdims: bool) -> str:
    """ReduceX over `axes`; axes move from attribute to input at opset 18 (ReduceSum at 13)."""
    keep = int(bool(keepdims))
    if axes is None:
        return ctx.node(op, [x], keepdims=keep)
    input_from = 13 if op == "ReduceSum" else 18
    if ctx.opset >= input_from:
        return ctx.node(op, [x, onnx_axes(ctx, axes)], keepdims=keep)
    return ctx.node(op, [x], axes=list(axes), keepdims=keep)


def onnx_scalar(ctx, value: float, like: np.dtype, hint: str = "c") -> str:
    return ctx.const(np.asarray(value, dtype=like), hint)


def reshape_target(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """A Reshape shape input that never bakes in the batch size (dimension 0).

    Keeps dimension 0 with 0 when it passes through unchanged, otherwise lets it be inferred
    with -1; every other dimension is a constant of the traced shape.
    """
    if not out_shape:
        return np.zeros((0,), dtype=np.int64)
    target = list(out_shape)
    if in_shape and out_shape[0] == in_shape[0]:
        target[0] = 0
    else:
        target[0] = -1
    return np.asarray(target, dtype=np.int64)
