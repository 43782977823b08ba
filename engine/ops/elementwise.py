"""Element-wise primitives: arithmetic, unary math, activations, comparisons, where, cast.

Each differentiable one states `scale(node, i, v)`: d out / d x_i times v, in engine ops. The
Jacobian of an element-wise op is diagonal, so that one product is both the JVP (v a tangent)
and the VJP (v a cotangent, summed back over broadcast axes by the base class).
"""

from __future__ import annotations

import math

import numpy as np

from engine.ops import Elementwise, Linear, Primitive, register
from engine.ops._util import TWO_OVER_SQRT_PI, erf, onnx_dtype, onnx_scalar
from engine.tensor import Tensor, apply


def _const(a: np.ndarray) -> Tensor:
    """A piecewise-constant factor (a mask, a sign, a tie split): no derivative of its own."""
    return Tensor._wrap(a)


@register
class Add(Elementwise):
    name = "add"

    def forward(a, b):
        return a + b

    def scale(node, i, v):
        return v

    def onnx(ctx, ins, node):
        return ctx.node("Add", ins)


@register
class Sub(Elementwise):
    name = "sub"

    def forward(a, b):
        return a - b

    def scale(node, i, v):
        return v if i == 0 else -v

    def onnx(ctx, ins, node):
        return ctx.node("Sub", ins)


@register
class Mul(Elementwise):
    name = "mul"

    def forward(a, b):
        return a * b

    def scale(node, i, v):  # d(ab)/da = b, d(ab)/db = a
        return v * node.inputs[1 - i]

    def onnx(ctx, ins, node):
        return ctx.node("Mul", ins)


@register
class Div(Elementwise):
    name = "div"

    def forward(a, b):
        return a / b

    def scale(node, i, v):  # d(a/b)/da = 1/b, d(a/b)/db = -(a/b)/b
        b = node.inputs[1]
        return v / b if i == 0 else -(v * node.output) / b

    def onnx(ctx, ins, node):
        return ctx.node("Div", ins)


def _log_positive(a: Tensor) -> Tensor:
    """log(a) where a > 0 and 0 elsewhere (the exponent's derivative of a ** b)."""
    pos = _const(a.data > 0)
    safe = apply(Where, [pos, a, a._lift(1.0)])
    return apply(Where, [pos, safe.log(), a._lift(0.0)])


@register
class Pow(Elementwise):
    """a ** b; the exponent may be a tensor (its gradient uses log(a))."""

    name = "pow"

    def forward(a, b):
        return a**b

    def scale(node, i, v):  # d(a^b)/da = b a^(b-1), d(a^b)/db = a^b log(a)
        a, b = node.inputs
        if i == 0:
            return v * (b * a ** (b - 1))
        return v * (node.output * _log_positive(a))

    def onnx(ctx, ins, node):
        return ctx.node("Pow", ins)


def _tie_split(a, b, first):
    """Share of the gradient a gets from maximum/minimum: 1, 0, or 0.5 on ties (like torch)."""
    win = (a > b) if first else (a < b)
    return win.astype(np.result_type(a, b)) + 0.5 * (a == b)


@register
class Maximum(Elementwise):
    name = "maximum"

    def forward(a, b):
        return np.maximum(a, b)

    def scale(node, i, v):
        share = _tie_split(*node.xs, True)
        return v * _const(share if i == 0 else 1 - share)

    def onnx(ctx, ins, node):
        return ctx.node("Max", ins)


@register
class Minimum(Elementwise):
    name = "minimum"

    def forward(a, b):
        return np.minimum(a, b)

    def scale(node, i, v):
        share = _tie_split(*node.xs, False)
        return v * _const(share if i == 0 else 1 - share)

    def onnx(ctx, ins, node):
        return ctx.node("Min", ins)


@register
class Neg(Elementwise):
    name = "neg"

    def forward(x):
        return -x

    def scale(node, i, v):
        return -v

    def onnx(ctx, ins, node):
        return ctx.node("Neg", ins)


@register
class Exp(Elementwise):
    name = "exp"

    def forward(x):
        return np.exp(x)

    def scale(node, i, v):
        return v * node.output

    def onnx(ctx, ins, node):
        return ctx.node("Exp", ins)


@register
class Log(Elementwise):
    name = "log"

    def forward(x):
        return np.log(x)

    def scale(node, i, v):
        return v / node.inputs[0]

    def onnx(ctx, ins, node):
        return ctx.node("Log", ins)


@register
class Sqrt(Elementwise):
    name = "sqrt"

    def forward(x):
        return np.sqrt(x)

    def scale(node, i, v):
        return v / (node.output * 2.0)

    def onnx(ctx, ins, node):
        return ctx.node("Sqrt", ins)


@register
class Abs(Elementwise):
    name = "abs"

    def forward(x):
        return np.abs(x)

    def scale(node, i, v):
        return v * _const(np.sign(node.xs[0]))

    def onnx(ctx, ins, node):
        return ctx.node("Abs", ins)


@register
class Tanh(Elementwise):
    name = "tanh"

    def forward(x):
        return np.tanh(x)

    def scale(node, i, v):
        y = node.output
        return v * (1.0 - y * y)

    def onnx(ctx, ins, node):
        return ctx.node("Tanh", ins)


@register
class Sigmoid(Elementwise):
    name = "sigmoid"

    def forward(x):
        # tanh form: no overflow for large |x|, keeps the input's float dtype
        return 0.5 * (1 + np.tanh(0.5 * x))

    def scale(node, i, v):
        y = node.output
        return v * (y * (1.0 - y))

    def onnx(ctx, ins, node):
        return ctx.node("Sigmoid", ins)


@register
class Relu(Elementwise):
    name = "relu"

    def forward(x):
        return np.maximum(x, 0)

    def scale(node, i, v):
        return v * _const(node.xs[0] > 0)

    def onnx(ctx, ins, node):
        return ctx.node("Relu", ins)


@register
class LeakyRelu(Elementwise):
    name = "leaky_relu"

    def forward(x, negative_slope=0.01):
        return np.where(x > 0, x, x * np.asarray(negative_slope, x.dtype))

    def scale(node, i, v):
        x = node.xs[0]
        slope = np.asarray(node.attrs["negative_slope"], x.dtype)
        return v * _const(np.where(x > 0, np.ones((), x.dtype), slope))

    def onnx(ctx, ins, node):
        return ctx.node("LeakyRelu", ins, alpha=float(node.attrs["negative_slope"]))


@register
class Erf(Elementwise):
    name = "erf"

    def forward(x):
        return erf(x)

    def scale(node, i, v):  # erf'(x) = 2/sqrt(pi) exp(-x^2)
        x = node.inputs[0]
        return v * ((-(x * x)).exp() * TWO_OVER_SQRT_PI)

    def onnx(ctx, ins, node):
        return ctx.node("Erf", ins)


def _gelu_slope(x: Tensor, approximate: str) -> Tensor:
    """d gelu / dx in engine ops: Phi(x) + x phi(x), or the tanh form's derivative."""
    if approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        x2 = x * x
        th = ((x + x2 * x * 0.044715) * k).tanh()
        return (th + 1.0) * 0.5 + x * (1.0 - th * th) * ((x2 * (3 * 0.044715) + 1.0) * (0.5 * k))
    cdf = (apply(Erf, [x * (1 / math.sqrt(2))]) + 1.0) * 0.5
    pdf = (x * x * -0.5).exp() * (1 / math.sqrt(2 * math.pi))
    return cdf + x * pdf


@register
class Gelu(Elementwise):
    """x * Phi(x): exact erf form by default, tanh approximation with approximate='tanh'."""

    name = "gelu"

    def forward(x, approximate="none"):
        if approximate == "tanh":
            k = math.sqrt(2 / math.pi)
            return 0.5 * x * (1 + np.tanh(k * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + erf(x * (1 / math.sqrt(2))).astype(x.dtype, copy=False))

    def scale(node, i, v):
        return v * _gelu_slope(node.inputs[0], node.attrs["approximate"])

    def onnx(ctx, ins, node):
        approximate = node.attrs["approximate"]
        if ctx.opset >= 20:
            return ctx.node("Gelu", ins, approximate=approximate)
        dt = node.inputs[0].dtype
        x = ins[0]
        half = onnx_scalar(ctx, 0.5, dt, "half")
        one = onnx_scalar(ctx, 1.0, dt, "one")
        if approximate == "tanh":
            cube = ctx.node("Mul", [ctx.node("Mul", [x, x]), x])
            inner = ctx.node("Add", [x, ctx.node("Mul", [cube, onnx_scalar(ctx, 0.044715, dt)])])
            scaled = ctx.node("Mul", [inner, onnx_scalar(ctx, math.sqrt(2 / math.pi), dt)])
            phi = ctx.node("Add", [one, ctx.node("Tanh", [scaled])])
        else:
            scaled = ctx.node("Mul", [x, onnx_scalar(ctx, 1 / math.sqrt(2), dt, "inv_sqrt2")])
            phi = ctx.node("Add", [one, ctx.node("Erf", [scaled])])
        return ctx.node("Mul", [ctx.node("Mul", [x, half]), phi])


@register
class Clip(Elementwise):
    """clamp(x, min, max); either bound may be None. Gradient passes where min <= x <= max."""

    name = "clip"

    def forward(x, min=None, max=None):
        return np.clip(x, min, max)

    def scale(node, i, v):
        return v * _const(_inside(node))

    def onnx(ctx, ins, node):
        dt = node.inputs[0].dtype
        lo, hi = node.attrs["min"], node.attrs["max"]
        bounds = [onnx_scalar(ctx, lo, dt, "min") if lo is not None else ""]
        bounds.append(onnx_scalar(ctx, hi, dt, "max") if hi is not None else "")
        while bounds and bounds[-1] == "":
            bounds.pop()
        return ctx.node("Clip", [ins[0], *bounds])


def _inside(node):
    x = node.xs[0]
    lo, hi = node.attrs["min"], node.attrs["max"]
    mask = np.ones(x.shape, dtype=bool)
    if lo is not None:
        mask &= x >= lo
    if hi is not None:
        mask &= x <= hi
    return mask


@register
class Where(Elementwise):
    """cond ? a : b; the boolean condition gets no gradient."""

    name = "where"

    def forward(cond, a, b):
        return np.where(cond, a, b)

    def scale(node, i, v):
        cond, zero = node.inputs[0], v._lift(0.0)
        return apply(Where, [cond, v, zero] if i == 1 else [cond, zero, v])

    def onnx(ctx, ins, node):
        return ctx.node("Where", ins)


class _Compare(Primitive):
    """Comparison: boolean output, no gradient."""

    differentiable = False


def _comparison(name, fn, onnx_op, negate=False):
    def forward(a, b):
        return fn(a, b)

    def onnx(ctx, ins, node):
        out = ctx.node(onnx_op, ins)
        return ctx.node("Not", [out]) if negate else out

    return register(type(name.title(), (_Compare,), {"name": name, "forward": forward,
                                                      "onnx": onnx}))  # fmt: skip


Equal = _comparison("eq", np.equal, "Equal")
NotEqual = _comparison("ne", np.not_equal, "Equal", negate=True)
Less = _comparison("lt", np.less, "Less")
LessEqual = _comparison("le", np.less_equal, "LessOrEqual")
Greater = _comparison("gt", np.greater, "Greater")
GreaterEqual = _comparison("ge", np.greater_equal, "GreaterOrEqual")


@register
class Cast(Linear):
    """Convert to another dtype; the gradient is cast back (none into integer inputs)."""

    name = "cast"

    def forward(x, dtype):
        return x.astype(dtype, copy=False)

    def transpose(g, node):
        x = node.inputs[0]
        return (g.astype(x.dtype) if x.dtype.kind == "f" else None,)

    def onnx(ctx, ins, node):
        return ctx.node("Cast", ins, to=onnx_dtype(node.attrs["dtype"]))


@register
class Detach(Primitive):
    """The same values with no gradient flowing back (Tensor.detach())."""

    name = "detach"
    differentiable = False

    def forward(x):
        return x

    def onnx(ctx, ins, node):
        return ctx.node("Identity", ins)
