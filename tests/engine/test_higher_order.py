"""Derivatives of derivatives, for every primitive: Hessians against torch.func (float64), both
Hessian modes against each other, hvp against the Hessian, third derivatives against finite
differences of the second, and the Tensor API (create_graph) against torch's double backward."""

from __future__ import annotations

import numpy as np
import pytest

import engine
import engine.functional as F
from engine import Tensor
from engine.autodiff import (
    auto_hessian_mode,
    dual_level,
    grad,
    hessian,
    hvp,
    jacobian,
    jvp,
    make_dual,
    vjp,
)
from engine.ops import REGISTRY, Primitive, register
from engine.tensor import apply
from tests.engine.test_ops import CASES, float_args
from tests.support.system import require_module

SECOND_ORDER_CASES = [c for c in CASES if c.torch is not None]


def _batch_norm_composite(eps):
    def bn(T, TF, x, w, b):
        axes = (0, *range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(axes, keepdim=True)
        var = ((x - mean) ** 2).mean(axes, keepdim=True)
        return (x - mean) / T.sqrt(var + eps) * w.reshape(shape) + b.reshape(shape)

    return bn


def _layer_norm_composite(T, TF, x, w, b):
    mean = x.mean((1, 2), keepdim=True)
    var = ((x - mean) ** 2).mean((1, 2), keepdim=True)
    return (x - mean) / T.sqrt(var + 1e-5) * w + b


# torch 2.13's fused batch_norm and layer_norm get mixed second derivatives (input with weight)
# wrong in float64: jacfwd(jacrev) and jacrev(jacrev) both disagree with central differences
# of torch's own gradient (test_torch_fused_norms_disagree_with_their_own_gradient). The
# second-order reference for those cases is the same function written with elementary ops.
SECOND_ORDER_TORCH = {
    "batch_norm_train_4d": _batch_norm_composite(1e-5),
    "batch_norm_train_2d": _batch_norm_composite(1e-3),
    "layer_norm": _layer_norm_composite,
}


@pytest.fixture(scope="module")
def torch():
    return require_module("torch")


def flat_function(case, lib, torch_mod=None):
    """The case as a function of one flat vector of its differentiable inputs, contracted with
    a fixed random cotangent so it is scalar: z -> sum(f(inputs(z)) * w)."""
    wrt = float_args(case)
    sizes = [case.inputs[i].size for i in wrt]
    bounds = np.cumsum([0, *sizes])
    out_shape = np.asarray(case.fn(*[Tensor(a) for a in case.inputs]).data).shape
    w = np.random.default_rng(11).standard_normal(out_shape)

    if lib == "engine":

        def f(z):
            args = [Tensor(a) for a in case.inputs]
            for k, i in enumerate(wrt):
                args[i] = z[bounds[k] : bounds[k + 1]].reshape(case.inputs[i].shape)
            return (case.fn(*args) * Tensor(w)).sum()

    else:
        import torch.nn.functional as tf

        def f(z):
            args = [torch_mod.from_numpy(np.array(a)) for a in case.inputs]
            for k, i in enumerate(wrt):
                args[i] = z[bounds[k] : bounds[k + 1]].reshape(case.inputs[i].shape)
            reference = SECOND_ORDER_TORCH.get(case.id, case.torch)
            return (reference(torch_mod, tf, *args) * torch_mod.from_numpy(w)).sum()

    z0 = np.concatenate([case.inputs[i].reshape(-1) for i in wrt]).astype(np.float64)
    return f, z0


def assert_close(actual, expected, rtol=1e-6, what=""):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected)
    scale = max(np.abs(expected).max(initial=0.0), 1e-12)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("case", SECOND_ORDER_CASES, ids=[c.id for c in SECOND_ORDER_CASES])
def test_second_derivatives_match_torch_func(torch, case):
    """Hessians by both engine modes equal torch.func.hessian within 1e-6; hvp equals H v."""
    f, z0 = flat_function(case, "engine")
    g, _ = flat_function(case, "torch", torch)
    expected = torch.func.hessian(g)(torch.from_numpy(z0)).numpy()
    fwd = np.asarray(hessian(f, mode="forward-over-reverse")(z0))
    rev = np.asarray(hessian(f, mode="reverse-over-reverse")(z0))
    assert fwd.shape == expected.shape == (z0.size, z0.size)
    assert_close(fwd, expected, what="forward-over-reverse vs torch.func.hessian")
    assert_close(rev, expected, what="reverse-over-reverse vs torch.func.hessian")
    assert_close(fwd, rev, rtol=1e-9, what="forward-over-reverse vs reverse-over-reverse")
    v = np.random.default_rng(5).standard_normal(z0.size)
    assert_close(hvp(f, z0, v), expected @ v, what="hvp vs H @ v")


@pytest.mark.parametrize("case_id", sorted(SECOND_ORDER_TORCH))
def test_torch_fused_norms_disagree_with_their_own_gradient(torch, case_id):
    """Why SECOND_ORDER_TORCH exists: a Hessian column of the fused torch op against central
    differences of its own gradient; the engine agrees with the differences."""
    case = next(c for c in CASES if c.id == case_id)
    w = torch.from_numpy(np.random.default_rng(11).standard_normal(
        np.asarray(case.fn(*[Tensor(a) for a in case.inputs]).data).shape))  # fmt: skip

    def fused(z):
        return (case.torch(torch, torch.nn.functional, *_split(case, z)) * w).sum()

    z = torch.from_numpy(np.concatenate([a.reshape(-1) for a in case.inputs]))
    k = 0  # the first input element, mixed with the weight's entries in the column
    e = torch.zeros_like(z)
    e[k] = 1e-6
    gradient = torch.func.grad(fused)
    differences = ((gradient(z + e) - gradient(z - e)) / 2e-6).numpy()
    torch_column = torch.func.hessian(fused)(z).numpy()[:, k]
    f, z0 = flat_function(case, "engine")
    basis = np.zeros(z0.size)
    basis[k] = 1.0
    assert_close(hvp(f, z0, basis), differences, rtol=1e-5)
    assert not np.allclose(torch_column, differences, rtol=1e-3, atol=1e-6)


def _split(case, z):
    out, at = [], 0
    for a in case.inputs:
        out.append(z[at : at + a.size].reshape(a.shape))
        at += a.size
    return out


STATED_TRANSPOSES = sorted(
    name for name, p in REGISTRY.items() if p.derivative == "jvp" and p.transpose is not None
)


@pytest.mark.parametrize("name", STATED_TRANSPOSES)
def test_stated_transposes_are_adjoint_to_the_jvp(name):
    """A jvp primitive that also states its transpose (for speed) states the same derivative:
    <J t, g> == <t, J^T g> on every case of the op, and the stated transpose equals the one
    derived by running the JVP backwards."""
    from engine.ops._derive import transpose_jvp

    cases = [c for c in CASES if name in c.ops]
    assert cases, f"{name} has no case"
    rng = np.random.default_rng(3)
    for case in cases:
        fn, inputs = partial_fn_of(case)
        t = [rng.standard_normal(a.shape) for a in inputs]
        out, jt = jvp(fn, inputs, t)
        g = rng.standard_normal(out.shape)
        _, back = vjp(fn, *inputs)
        jtg = back(g)
        lhs = float((np.asarray(jt) * g).sum())
        rhs = sum(float((np.asarray(a) * b).sum()) for a, b in zip(jtg, t, strict=True))
        assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs)), (case.id, lhs, rhs)
    case = cases[0]
    fn, inputs = partial_fn_of(case)
    out = fn(*[Tensor(a, requires_grad=True) for a in inputs])
    node = out._node
    assert node.op is REGISTRY[name], f"{case.id} must end in {name}"
    node.output = out
    g = Tensor(rng.standard_normal(out.shape))
    stated = REGISTRY[name].transpose(g, node)
    derived = transpose_jvp(type("Derived", (REGISTRY[name],), {"transpose": None}), g, node)
    node.output = None
    for a, b in zip(stated, derived, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, rtol=1e-12)


def partial_fn_of(case):
    from tests.engine.test_ops import partial_fn

    return partial_fn(case)


def test_every_differentiable_primitive_has_a_second_order_case():
    covered = {op for case in SECOND_ORDER_CASES for op in case.ops}
    differentiable = {name for name, p in REGISTRY.items() if p.differentiable}
    assert differentiable - covered == set()


# --- third derivatives of scalar element-wise functions ------------------------------------

UNARY = {
    "exp": lambda x: x.exp(),
    "log": lambda x: (x * x + 0.5).log(),
    "sqrt": lambda x: (x * x + 0.5).sqrt(),
    "tanh": lambda x: x.tanh(),
    "sigmoid": lambda x: x.sigmoid(),
    "erf": engine.erf,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "pow": lambda x: (x * x + 1.0) ** 1.7,
    "pow_exponent": lambda x: 1.3**x,
    "div": lambda x: 1.0 / (x * x + 1.0),
    "mul_neg_sub": lambda x: -(x * x * x) - x,
    "softplus_composite": lambda x: (x.exp() + 1.0).log(),
    "abs_relu_leaky_clip": lambda x: x.abs() * x + F.relu(x) * x * x + F.leaky_relu(x, 0.1) * x
    + x.clip(-2.0, 2.0) ** 3,
    "maximum_minimum_where": lambda x: engine.maximum(x * x, x) * x
    + engine.minimum(x, -x) * x * x
    + engine.where(x > 0, x * x * x, x.exp()),
}  # fmt: skip
POINTS = np.array([-1.7, -0.9, -0.35, 0.3, 0.8, 1.6])  # away from every kink


def _derivatives(fn, order):
    d = fn
    for _ in range(order):
        d = grad(lambda x, d=d: d(x).sum())
    return d


@pytest.mark.parametrize("name", sorted(UNARY))
def test_third_derivative_equals_finite_differences_of_the_second(name):
    fn = UNARY[name]
    second, third = _derivatives(fn, 2), _derivatives(fn, 3)
    h = 1e-4
    fd = (np.asarray(second(POINTS + h)) - np.asarray(second(POINTS - h))) / (2 * h)
    assert_close(third(POINTS), fd, rtol=1e-6, what=f"{name}''' (reverse^3) vs FD of f''")
    # the same third derivative by forward over reverse over reverse
    fwd = jvp(second, (POINTS,), (np.ones_like(POINTS),))[1]
    assert_close(fwd, third(POINTS), rtol=1e-10, what="forward-over-reverse^2 vs reverse^3")


def test_forward_over_forward_is_the_second_directional_derivative():
    def f(x):
        return (x.sin_free() if False else (x * x).tanh() * x).sum()

    x = np.array([0.3, -0.7, 1.1])
    u, v = np.array([1.0, 0.5, -0.2]), np.array([-0.3, 0.9, 0.4])
    inner = lambda y: jvp(f, (y,), (u,))[1]  # noqa: E731
    _, uv = jvp(inner, (x,), (v,))
    expected = u @ np.asarray(hessian(f)(x)) @ v
    assert_close(uv, expected, rtol=1e-10)


# --- the transformations compose ------------------------------------------------------------


def rosenbrock(x):
    return ((1.0 - x[:-1]) ** 2 + 100.0 * (x[1:] - x[:-1] * x[:-1]) ** 2).sum()


def rosenbrock_hessian(x):
    n = x.size
    h = np.zeros((n, n))
    for i in range(n - 1):
        h[i, i] += 2 - 400 * (x[i + 1] - x[i] ** 2) + 800 * x[i] ** 2
        h[i, i + 1] += -400 * x[i]
        h[i + 1, i] += -400 * x[i]
        h[i + 1, i + 1] += 200
    return h


def test_grad_of_grad_jvp_of_grad_vjp_of_grad_and_jacobian_of_grad_agree():
    x = np.array([0.5, -1.2, 0.8, 1.5])
    expected = rosenbrock_hessian(x)
    v = np.array([0.2, -0.1, 0.7, 0.3])
    assert_close(jacobian(grad(rosenbrock), x, mode="forward"), expected, rtol=1e-12)
    assert_close(jacobian(grad(rosenbrock), x, mode="reverse"), expected, rtol=1e-12)
    assert_close(jvp(grad(rosenbrock), (x,), (v,))[1], expected @ v, rtol=1e-12)
    _, back = vjp(grad(rosenbrock), x)
    assert_close(back(v)[0], expected.T @ v, rtol=1e-12)
    assert_close(grad(lambda y: grad(rosenbrock)(y) @ Tensor(v))(x), expected @ v, rtol=1e-12)
    for mode in ("auto", "forward-over-reverse", "reverse-over-reverse"):
        assert_close(hessian(rosenbrock, mode=mode)(x), expected, rtol=1e-12)


def test_hessian_mode_is_chosen_by_the_output_size():
    assert auto_hessian_mode(1) == "reverse-over-reverse"
    assert auto_hessian_mode(3) == "forward-over-reverse"
    with pytest.raises(ValueError, match="mode must be one of"):
        hessian(rosenbrock, mode="sideways")


def test_hessian_of_a_vector_function_has_one_block_per_output():
    def f(x):
        return engine.stack([(x * x).sum() * x[0], x[1].exp() * x[2]])

    x = np.array([0.4, -0.3, 1.2])
    h = np.asarray(hessian(f)(x))
    assert h.shape == (2, 3, 3)
    for k in range(2):
        assert_close(h[k], np.asarray(hessian(lambda y, k=k: f(y)[k])(x)), rtol=1e-12)


def test_a_closure_over_the_outer_variable_is_not_confused_with_the_inner_one():
    # d/dx [x * d/dy (x * y)] = d/dx [x * x] = 2x (the classic perturbation-confusion check)
    def outer(x):
        return x * grad(lambda y: (x * y).sum())(np.ones(1))

    x = np.array([3.0])
    assert_close(grad(lambda x: outer(x).sum())(x), 2 * x, rtol=1e-12)
    tangent = jvp(outer, (x,), (np.ones(1),))[1]
    assert_close(tangent, 2 * x, rtol=1e-12)


def test_hvp_of_a_function_with_parameters_in_a_closure():
    w = engine.Parameter(np.array([[0.5, -1.0], [2.0, 0.3]]))

    def f(x):
        return (F.tanh(w @ x) ** 2).sum()

    x = np.array([0.2, -0.4])
    v = np.array([1.0, 0.5])
    assert_close(hvp(f, x, v), np.asarray(hessian(f)(x)) @ v, rtol=1e-12)


# --- the Tensor API: backward(create_graph=True) and engine.autograd.grad ---------------------


def test_create_graph_double_backward_matches_torch(torch):
    rng = np.random.default_rng(0)
    xs, ws = rng.standard_normal((5, 3)), rng.standard_normal((3, 4))
    x = Tensor(xs.copy(), requires_grad=True)
    w = engine.Parameter(ws.copy())
    loss = F.gelu(x @ w).pow_free() if False else (F.gelu(x @ w) ** 2).sum()
    loss.backward(create_graph=True)
    assert isinstance(x.grad, Tensor) and x.grad.requires_grad
    penalty = (x.grad * x.grad).sum()
    w.grad = None
    penalty.backward()

    tx = torch.from_numpy(xs.copy()).requires_grad_(True)
    tw = torch.from_numpy(ws.copy()).requires_grad_(True)
    tl = (torch.nn.functional.gelu(tx @ tw) ** 2).sum()
    (gx,) = torch.autograd.grad(tl, tx, create_graph=True)
    (gw,) = torch.autograd.grad((gx * gx).sum(), tw)
    assert_close(w.grad, gw.numpy(), rtol=1e-10)


def test_backward_create_graph_accumulates_a_differentiable_grad_like_torch(torch):
    x = Tensor(np.array([1.5, -0.5]), requires_grad=True)
    (x**3).sum().backward(create_graph=True)  # x.grad = 3x^2, recorded
    g = x.grad
    (g * g).sum().backward()  # adds d(9x^4)/dx = 36 x^3 into x.grad
    tx = torch.tensor([1.5, -0.5], dtype=torch.float64, requires_grad=True)
    (tx**3).sum().backward(create_graph=True)
    (tx.grad * tx.grad).sum().backward()
    assert_close(x.grad, tx.grad.detach().numpy(), rtol=1e-12)


def test_autograd_grad_leaves_dot_grad_alone_and_reports_unused_inputs():
    a = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = Tensor(np.array([3.0]), requires_grad=True)
    out = (a * a).sum()
    (ga,) = engine.autograd.grad(out, a)
    np.testing.assert_allclose(ga.data, [2.0, 4.0])
    assert a.grad is None and not ga.requires_grad
    with pytest.raises(RuntimeError, match="input 1 of grad.. is not used"):
        engine.autograd.grad(out, [a, b])
    ga, gb = engine.autograd.grad(out, [a, b], allow_unused=True)
    assert gb is None
    (gg,) = engine.autograd.grad(out, a, create_graph=True)
    assert gg.requires_grad
    (second,) = engine.autograd.grad(gg.sum(), a)
    np.testing.assert_allclose(second.data, [2.0, 2.0])


def test_first_order_backward_records_nothing():
    x = Tensor(np.array([0.3, 0.7]), requires_grad=True)
    (x.tanh() * x).sum().backward()
    assert type(x.grad) is np.ndarray


# --- a derivative that is first-order only says so ------------------------------------------


class _Cube(Primitive):
    """x^3 with a derivative rule on plain arrays (not differentiable again)."""

    name = "cube_first_order_for_test"
    higher_order = False

    def forward(x):
        return x**3

    def jvp(t, node):  # the coefficient is a plain array: right once, wrong if differentiated
        return t[0] * Tensor(3 * node.xs[0] ** 2)

    def onnx(ctx, ins, node):
        return ctx.node("Mul", [ins[0], ctx.node("Mul", [ins[0], ins[0]])])


def test_a_first_order_only_primitive_names_itself_when_differentiated_twice():
    x = np.array([0.5, 2.0])
    assert_close(grad(lambda t: apply(_Cube, [t]).sum())(x), 3 * x**2, rtol=1e-12)
    with pytest.raises(NotImplementedError, match="cube_first_order_for_test"):
        grad(lambda t: grad(lambda u: apply(_Cube, [u]).sum())(t).sum())(x)
    with pytest.raises(NotImplementedError, match="cube_first_order_for_test"):
        hvp(lambda t: apply(_Cube, [t]).sum(), x, np.ones(2))


def test_register_refuses_a_primitive_without_a_derivative_rule():
    class NoRule(Primitive):
        name = "no_rule_for_test"

        def forward(x):
            return x

        def onnx(ctx, ins, node):
            return ins[0]

    with pytest.raises(TypeError, match="lacks \\['jvp'\\]"):
        register(NoRule)
    assert "no_rule_for_test" not in REGISTRY


def test_dual_numbers_nest_and_do_not_leak_between_levels():
    with dual_level():
        x = make_dual(np.array([2.0]), np.array([1.0]))
        with dual_level():
            y = make_dual(x, np.array([1.0]))
            z = y * y * y  # z' (inner) = 3 y^2, carrying an outer tangent 6 y
        inner = z._tan[max(z._tan)]
        assert_close(inner.data, [12.0], rtol=1e-12)
        assert_close(inner.tangent, [12.0], rtol=1e-12)  # d(3x^2)/dx = 6x
