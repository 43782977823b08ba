"""Element-wise primitives: arithmetic, unary math, activations, comparisons, where, cast."""

from __future__ import annotations

import math

import numpy as np

from engine.ops import Primitive, register
from engine.ops._util import TWO_OVER_SQRT_PI, erf, onnx_dtype, onnx_scalar, unbroadcast


def _grads(node, *gs):
    """Per-input cotangents reduced to each input's shape; None where not needed."""
    return tuple(
        unbroadcast(g, x.shape) if need and g is not None else None
        for g, x, need in zip(gs, node.xs, node.needs, strict=True)
    )


@register
class Add(Primitive):
    name = "add"

    def forward(a, b):
        return a + b

    def vjp(g, node):
        return _grads(node, g, g)

    def jvp(t, node):
        return t[0] + t[1]

    def onnx(ctx, ins, node):
        return ctx.node("Add", ins)


@register
class Sub(Primitive):
    name = "sub"

    def forward(a, b):
        return a - b

    def vjp(g, node):
        return _grads(node, g, -g if node.needs[1] else None)

    def jvp(t, node):
        return t[0] - t[1]

    def onnx(ctx, ins, node):
        return ctx.node("Sub", ins)


@register
class Mul(Primitive):
    name = "mul"

    def forward(a, b):
        return a * b

    def vjp(g, node):
        a, b = node.xs
        return _grads(node, g * b if node.needs[0] else None, g * a if node.needs[1] else None)

    def jvp(t, node):
        a, b = node.xs
        return t[0] * b + a * t[1]

    def onnx(ctx, ins, node):
        return ctx.node("Mul", ins)


@register
class Div(Primitive):
    name = "div"

    def forward(a, b):
        return a / b

    def vjp(g, node):
        a, b = node.xs
        ga = g / b if node.needs[0] else None
        gb = -g * node.out / b if node.needs[1] else None
        return _grads(node, ga, gb)

    def jvp(t, node):
        b = node.xs[1]
        return (t[0] - node.out * t[1]) / b

    def onnx(ctx, ins, node):
        return ctx.node("Div", ins)


@register
class Pow(Primitive):
    """a ** b; the exponent may be a tensor (its gradient uses log(a))."""

    name = "pow"

    def forward(a, b):
        return a**b

    def vjp(g, node):
        a, b = node.xs
        ga = g * b * a ** (b - 1) if node.needs[0] else None
        gb = None
        if node.needs[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                gb = g * node.out * np.where(a > 0, np.log(np.where(a > 0, a, 1)), 0)
        return _grads(node, ga, gb)

    def jvp(t, node):
        a, b = node.xs
        out = t[0] * b * a ** (b - 1)
        if t[1] is not None and np.any(t[1]):
            out = out + t[1] * node.out * np.where(a > 0, np.log(np.where(a > 0, a, 1)), 0)
        return out

    def onnx(ctx, ins, node):
        return ctx.node("Pow", ins)


def _tie_split(a, b, first):
    """Share of the gradient a gets from maximum/minimum: 1, 0, or 0.5 on ties (like torch)."""
    win = (a > b) if first else (a < b)
    return win.astype(np.result_type(a, b)) + 0.5 * (a == b)


@register
class Maximum(Primitive):
    name = "maximum"

    def forward(a, b):
        return np.maximum(a, b)

    def vjp(g, node):
        a, b = node.xs
        share = _tie_split(a, b, True)
        return _grads(node, g * share, g * (1 - share))

    def jvp(t, node):
        share = _tie_split(*node.xs, True)
        return t[0] * share + t[1] * (1 - share)

    def onnx(ctx, ins, node):
        return ctx.node("Max", ins)


@register
class Minimum(Primitive):
    name = "minimum"

    def forward(a, b):
        return np.minimum(a, b)

    def vjp(g, node):
        a, b = node.xs
        share = _tie_split(a, b, False)
        return _grads(node, g * share, g * (1 - share))

    def jvp(t, node):
        share = _tie_split(*node.xs, False)
        return t[0] * share + t[1] * (1 - share)

    def onnx(ctx, ins, node):
        return ctx.node("Min", ins)


@register
class Neg(Primitive):
    name = "neg"

    def forward(x):
        return -x

    def vjp(g, node):
        return (-g,)

    def jvp(t, node):
        return -t[0]

    def onnx(ctx, ins, node):
        return ctx.node("Neg", ins)


@register
class Exp(Primitive):
    name = "exp"

    def forward(x):
        return np.exp(x)

    def vjp(g, node):
        return (g * node.out,)

    def jvp(t, node):
        return t[0] * node.out

    def onnx(ctx, ins, node):
        return ctx.node("Exp", ins)


@register
class Log(Primitive):
    name = "log"

    def forward(x):
        return np.log(x)

    def vjp(g, node):
        return (g / node.xs[0],)

    def jvp(t, node):
        return t[0] / node.xs[0]

    def onnx(ctx, ins, node):
        return ctx.node("Log", ins)


@register
class Sqrt(Primitive):
    name = "sqrt"

    def forward(x):
        return np.sqrt(x)

    def vjp(g, node):
        return (g / (2 * node.out),)

    def jvp(t, node):
        return t[0] / (2 * node.out)

    def onnx(ctx, ins, node):
        return ctx.node("Sqrt", ins)


@register
class Abs(Primitive):
    name = "abs"

    def forward(x):
        return np.abs(x)

    def vjp(g, node):
        return (g * np.sign(node.xs[0]),)

    def jvp(t, node):
        return t[0] * np.sign(node.xs[0])

    def onnx(ctx, ins, node):
        return ctx.node("Abs", ins)


@register
class Tanh(Primitive):
    name = "tanh"

    def forward(x):
        return np.tanh(x)

    def vjp(g, node):
        return (g * (1 - node.out * node.out),)

    def jvp(t, node):
        return t[0] * (1 - node.out * node.out)

    def onnx(ctx, ins, node):
        return ctx.node("Tanh", ins)


@register
class Sigmoid(Primitive):
    name = "sigmoid"

    def forward(x):
        # tanh form: no overflow for large |x|, keeps the input's float dtype
        return 0.5 * (1 + np.tanh(0.5 * x))

    def vjp(g, node):
        return (g * node.out * (1 - node.out),)

    def jvp(t, node):
        return t[0] * node.out * (1 - node.out)

    def onnx(ctx, ins, node):
        return ctx.node("Sigmoid", ins)


@register
class Relu(Primitive):
    name = "relu"

    def forward(x):
        return np.maximum(x, 0)

    def vjp(g, node):
        return (g * (node.xs[0] > 0),)

    def jvp(t, node):
        return t[0] * (node.xs[0] > 0)

    def onnx(ctx, ins, node):
        return ctx.node("Relu", ins)


@register
class LeakyRelu(Primitive):
    name = "leaky_relu"

    def forward(x, negative_slope=0.01):
        return np.where(x > 0, x, x * np.asarray(negative_slope, x.dtype))

    def vjp(g, node):
        x = node.xs[0]
        return (np.where(x > 0, g, g * np.asarray(node.attrs["negative_slope"], g.dtype)),)

    def jvp(t, node):
        x = node.xs[0]
        return np.where(x > 0, t[0], t[0] * node.attrs["negative_slope"])

    def onnx(ctx, ins, node):
        return ctx.node("LeakyRelu", ins, alpha=float(node.attrs["negative_slope"]))


@register
class Erf(Primitive):
    name = "erf"

    def forward(x):
        return erf(x)

    def vjp(g, node):
        x = node.xs[0]
        return (g * (TWO_OVER_SQRT_PI * np.exp(-x * x)).astype(g.dtype, copy=False),)

    def jvp(t, node):
        x = node.xs[0]
        return t[0] * TWO_OVER_SQRT_PI * np.exp(-x * x)

    def onnx(ctx, ins, node):
        return ctx.node("Erf", ins)


def _gelu_grad(x, approximate):
    if approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        u = k * (x + 0.044715 * x**3)
        th = np.tanh(u)
        return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x)
    cdf = 0.5 * (1 + erf(x * (1 / math.sqrt(2))))
    pdf = np.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
    return (cdf + x * pdf).astype(x.dtype, copy=False)


@register
class Gelu(Primitive):
    """x * Phi(x): exact erf form by default, tanh approximation with approximate='tanh'."""

    name = "gelu"

    def forward(x, approximate="none"):
        if approximate == "tanh":
            k = math.sqrt(2 / math.pi)
            return 0.5 * x * (1 + np.tanh(k * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + erf(x * (1 / math.sqrt(2))).astype(x.dtype, copy=False))

    def vjp(g, node):
        return (g * _gelu_grad(node.xs[0], node.attrs["approximate"]),)

    def jvp(t, node):
        return t[0] * _gelu_grad(node.xs[0], node.attrs["approximate"])

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
class Clip(Primitive):
    """clamp(x, min, max); either bound may be None. Gradient passes where min <= x <= max."""

    name = "clip"

    def forward(x, min=None, max=None):
        return np.clip(x, min, max)

    def vjp(g, node):
        return (g * _inside(node),)

    def jvp(t, node):
        return t[0] * _inside(node)

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
class Where(Primitive):
    """cond ? a : b; the boolean condition gets no gradient."""

    name = "where"

    def forward(cond, a, b):
        return np.where(cond, a, b)

    def vjp(g, node):
        cond = node.xs[0]
        zero = np.zeros((), g.dtype)
        ga = np.where(cond, g, zero) if node.needs[1] else None
        gb = np.where(cond, zero, g) if node.needs[2] else None
        return _grads(node, None, ga, gb)

    def jvp(t, node):
        return np.where(node.xs[0], t[1], t[2])

    def onnx(ctx, ins, node):
        return ctx.node("Where", ins)


class _Compare(Primitive):
    """Comparison: boolean output, no gradient."""

    differentiable = False
    op = ""
    onnx_op = ""

    def vjp(g, node):
        return (None, None)

    def jvp(t, node):
        return None


def _comparison(name, fn, onnx_op, negate=False):
    def forward(a, b):
        return fn(a, b)

    def onnx(ctx, ins, node):
        out = ctx.node(onnx_op, ins)
        return ctx.node("Not", [out]) if negate else out

    cls = type(name.title(), (_Compare,), {"name": name, "forward": forward, "onnx": onnx})
    for rule in ("vjp", "jvp"):
        setattr(cls, rule, _Compare.__dict__[rule])
    return register(cls)


Equal = _comparison("eq", np.equal, "Equal")
NotEqual = _comparison("ne", np.not_equal, "Equal", negate=True)
Less = _comparison("lt", np.less, "Less")
LessEqual = _comparison("le", np.less_equal, "LessOrEqual")
Greater = _comparison("gt", np.greater, "Greater")
GreaterEqual = _comparison("ge", np.greater_equal, "GreaterOrEqual")


@register
class Cast(Primitive):
    """Convert to another dtype; the gradient is cast back (none into integer inputs)."""

    name = "cast"

    def forward(x, dtype):
        return x.astype(dtype, copy=False)

    def vjp(g, node):
        x = node.xs[0]
        return (g.astype(x.dtype, copy=False) if x.dtype.kind == "f" else None,)

    def jvp(t, node):
        if t[0] is None or np.dtype(node.attrs["dtype"]).kind != "f":
            return None
        return t[0].astype(node.attrs["dtype"], copy=False)

    def onnx(ctx, ins, node):
        return ctx.node("Cast", ins, to=onnx_dtype(node.attrs["dtype"]))


@register
class Detach(Primitive):
    """The same values with no gradient flowing back (Tensor.detach())."""

    name = "detach"
    differentiable = False

    def forward(x):
        return x

    def vjp(g, node):
        return (None,)

    def jvp(t, node):
        return None

    def onnx(ctx, ins, node):
        return ctx.node("Identity", ins)
