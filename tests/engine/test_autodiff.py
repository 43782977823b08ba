"""Tensor semantics and the autodiff transforms: accumulation, broadcasting, no_grad, deep
graphs, grad/vjp/jvp/jacobian/gradcheck, and tracing."""

from __future__ import annotations

import numpy as np
import pytest

import engine
import engine.functional as F
from engine import Tensor
from engine.autodiff import dual_level, grad, gradcheck, jacobian, jvp, make_dual, vjp
from engine.ops import Primitive
from engine.tensor import apply


def test_default_dtypes_follow_torch():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor([1, 2]).dtype == np.int64
    assert Tensor(np.zeros(2)).dtype == np.float64  # arrays keep their dtype
    assert engine.tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert engine.randn(2, 3).dtype == np.float32 and engine.zeros(2).dtype == np.float32
    assert engine.arange(3).dtype == np.int64 and engine.arange(0.0, 1.0, 0.5).dtype == np.float32
    x = Tensor([1.0, 2.0])
    assert (x * 2.5).dtype == np.float32 and (2 - x).dtype == np.float32
    assert (Tensor([1, 2]) * 2).dtype == np.int64
    with pytest.raises(TypeError, match="floating"):
        Tensor([1, 2], requires_grad=True)


def test_tensor_api_basics():
    x = Tensor(np.arange(24, dtype=np.float32).reshape(2, 3, 4), requires_grad=True)
    assert x.shape == (2, 3, 4) and x.ndim == 3 and x.size() == (2, 3, 4) and x.numel() == 24
    assert x.flatten(1).shape == (2, 12) and x.view(-1).shape == (24,)
    assert x.T.shape == (4, 3, 2) and x.permute(1, 0, 2).shape == (3, 2, 4)
    assert x.unsqueeze(-1).shape == (2, 3, 4, 1) and x[:, :1].squeeze().shape == (2, 4)
    assert x.sum(axis=1, keepdims=True).shape == (2, 1, 4)
    assert x[0, 1, 2].item() == 6.0 and x.numpy() is x.data
    assert np.asarray(x).shape == (2, 3, 4)
    assert "requires_grad=True" in repr(x)


def test_backward_accumulates_into_leaves():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(np.asarray(x.grad), [5.0, 7.0])


def test_a_value_used_twice_gets_both_contributions():
    x = Tensor(np.array(3.0), requires_grad=True)
    y = x * x + x  # dy/dx = 2x + 1
    y.backward()
    assert x.grad == 7.0


def test_broadcast_gradients_are_reduced_to_the_operand_shape():
    a = Tensor(np.ones((4, 1, 3)), requires_grad=True)
    b = Tensor(np.ones((2, 1)), requires_grad=True)
    c = Tensor(np.array(2.0), requires_grad=True)
    (a * b + c).sum().backward()
    assert a.grad.shape == (4, 1, 3) and np.all(a.grad == 2)
    assert b.grad.shape == (2, 1) and np.all(b.grad == 12)
    assert c.grad.shape == () and c.grad == 24


def test_ten_thousand_op_chain_backward_is_iterative():
    x = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001**10_000] * 2, rtol=1e-9)


def test_no_grad_stops_recording_and_enable_grad_resumes():
    w = Tensor(np.ones(3), requires_grad=True)
    with engine.no_grad():
        y = w * 2
        assert not engine.is_grad_enabled()
        with engine.enable_grad():
            z = w * 2
    assert not y.requires_grad and y._node is None
    assert z.requires_grad and engine.is_grad_enabled()

    @engine.no_grad()
    def infer(t):
        return t * 3

    assert not infer(w).requires_grad


def test_backward_needs_a_gradient_for_non_scalars():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="non-scalar"):
        (x * 2).backward()
    (x * 2).backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(x.grad, [2.0, 4.0, 6.0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()


def test_retain_grad_keeps_an_intermediate_gradient():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x * 3
    h.retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad, [6.0, 12.0])
    np.testing.assert_allclose(x.grad, [18.0, 36.0])


def test_manual_seed_makes_random_tensors_repeatable():
    engine.manual_seed(42)
    a = engine.randn(3, 3)
    b = engine.rand(2)
    engine.manual_seed(42)
    np.testing.assert_array_equal(a.data, engine.randn(3, 3).data)
    np.testing.assert_array_equal(b.data, engine.rand(2).data)


def test_grad_vjp_and_jvp():
    def f(x, y):
        return (x * y).sum() + (x**2).sum()

    x, y = np.array([1.0, 2.0]), np.array([3.0, -1.0])
    np.testing.assert_allclose(grad(f)(x, y), y + 2 * x)
    gx, gy = grad(f, argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gy, x)

    out, vjp_fn = vjp(lambda a: a.exp() * 2, x)
    np.testing.assert_allclose(out.data, 2 * np.exp(x))
    (g,) = vjp_fn(np.array([1.0, 0.5]))
    np.testing.assert_allclose(g, 2 * np.exp(x) * [1.0, 0.5])
    (g_again,) = vjp_fn(np.array([1.0, 0.5]))  # no accumulation between calls
    np.testing.assert_allclose(g_again, g)

    out, tangent = jvp(lambda a, b: a * b.tanh(), (x, y), (y, x))
    np.testing.assert_allclose(tangent, y * np.tanh(y) + x * (1 - np.tanh(y) ** 2) * x)
    assert out.tangent is None and not out.requires_grad


def test_jacobian_modes_agree_and_have_the_right_shape():
    w = np.random.default_rng(0).standard_normal((4, 3))

    def f(x):
        return F.tanh(Tensor(w) @ x)

    x = np.array([0.1, -0.2, 0.3])
    jf = jacobian(f, x, mode="forward")
    jr = jacobian(f, x, mode="reverse")
    ja = jacobian(f, x)
    assert jf.shape == (4, 3)
    np.testing.assert_allclose(jf, jr, rtol=1e-12)
    np.testing.assert_allclose(ja, jr, rtol=1e-12)
    np.testing.assert_allclose(jr, (1 - np.tanh(w @ x) ** 2)[:, None] * w, rtol=1e-12)
    m = np.arange(6.0).reshape(2, 3)
    assert jacobian(lambda t: t * 2.0, m).shape == (2, 3, 2, 3)
    with pytest.raises(ValueError, match="mode"):
        jacobian(f, x, mode="sideways")


def test_forward_mode_survives_no_grad_and_ignores_integer_inputs():
    with dual_level():
        x = make_dual(np.array([1.0, 2.0]), np.array([1.0, 0.0]))
        with engine.no_grad():
            y = F.embedding(np.array([1, 0]), x.reshape(2, 1)).sum() * x.sum()
    assert y.tangent is not None and float(y.tangent) == pytest.approx(6.0)  # d(s^2) = 2 s ds


class _WrongVJP(Primitive):
    name = "wrong_vjp_for_test"

    def forward(x):
        return x * x

    def vjp(g, node):
        return (g * node.xs[0],)  # should be 2x

    def jvp(t, node):
        return 2 * t[0] * node.xs[0]

    def onnx(ctx, ins, node):
        return ctx.node("Mul", [ins[0], ins[0]])


class _WrongJVP(_WrongVJP):
    name = "wrong_jvp_for_test"

    def vjp(g, node):
        return (2 * g * node.xs[0],)

    def jvp(t, node):
        return t[0]


def test_gradcheck_catches_wrong_reverse_and_forward_rules():
    x = np.array([0.5, -1.5])
    with pytest.raises(AssertionError, match="reverse mode"):
        gradcheck(lambda t: apply(_WrongVJP, [t]), [x])
    with pytest.raises(AssertionError, match="forward mode"):
        gradcheck(lambda t: apply(_WrongJVP, [t]), [x])
    assert gradcheck(lambda t: t * t, [x])


def test_backward_names_the_op_whose_vjp_returns_a_wrong_shape():
    class BadShape(_WrongVJP):
        name = "bad_shape_for_test"

        def vjp(g, node):
            return (g.sum(keepdims=True),)

    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="bad_shape_for_test"):
        apply(BadShape, [x]).sum().backward()


def test_trace_records_every_primitive_with_its_scope_even_under_no_grad():
    x = engine.randn(2, 3)
    w = engine.Parameter(engine.randn(4, 3).data)
    with engine.tracing.trace() as tr, engine.no_grad():
        with engine.tracing.scope("encoder"), engine.tracing.scope("fc"):
            h = F.linear(x, w)
        out = F.relu(h).sum(1)
    ops = [n.op.name for n in tr.nodes]
    assert ops == ["linear", "relu", "sum"]
    assert [n.scope for n in tr.nodes] == ["encoder.fc", "", ""]
    assert tr.nodes[0].inputs[1] is w
    assert tr.nodes[0].outputs[0] is h and tr.nodes[-1].outputs[0] is out
    assert tr.nodes[-1].attrs == {"axes": (1,), "keepdims": False}
    assert not engine.tracing.active()


def test_in_place_updates_follow_torch_rules():
    w = engine.Parameter(np.ones(3, dtype=np.float32))
    with pytest.raises(RuntimeError, match="no_grad"):
        w.mul_(2.0)
    with engine.no_grad():
        w.mul_(2.0).add_(Tensor(np.ones(3, dtype=np.float32)), alpha=0.5)
    np.testing.assert_allclose(w.data, 2.5)
    assert w.dtype == np.float32
    buf = engine.zeros(2)
    buf.fill_(3.0).copy_(np.array([1.0, 2.0]))
    np.testing.assert_allclose(buf.zero_().data, 0.0)
    assert engine.zeros(2, dtype=engine.float64).dtype == np.float64


def test_integer_primals_are_constants_in_vjp_and_jvp():
    w = np.arange(6.0).reshape(3, 2)
    idx = np.array([2, 0, 2])
    out, vjp_fn = vjp(lambda w, i: F.embedding(i, w), w, idx)
    gw, gi = vjp_fn(np.ones((3, 2)))
    assert gi is None
    np.testing.assert_allclose(gw, [[1, 1], [0, 0], [2, 2]])
    _, tangent = jvp(lambda w, i: F.embedding(i, w), (w, idx), (np.ones((3, 2)), None))
    np.testing.assert_allclose(tangent, np.ones((3, 2)))
    with pytest.raises(TypeError, match="floating"):
        make_dual(idx, idx)
