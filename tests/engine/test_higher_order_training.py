"""Higher derivatives where they are used: a WGAN-GP training step on the digits equal to
PyTorch's (float64), the README's examples (derivatives of derivatives, the physics-informed
network) run as written, and Newton's method with hvp + conjugate gradient."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.autodiff import hessian
from engine.datasets import load_digits
from tests.support.system import require_module

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def torch():
    return require_module("torch")


# --- WGAN-GP -----------------------------------------------------------------------------


def _critic_and_generator(lib):
    t = lib.nn
    critic = t.Sequential(t.Linear(64, 32), t.LeakyReLU(0.2), t.Linear(32, 16), t.Tanh(),
                          t.Linear(16, 1))  # fmt: skip
    generator = t.Sequential(t.Linear(8, 32), t.ReLU(), t.Linear(32, 64), t.Sigmoid())
    return critic, generator


def _weights(model_state: dict) -> dict:
    rng = np.random.default_rng(0)
    return {k: rng.uniform(-0.3, 0.3, shape) for k, shape in model_state.items()}


def _norm(g, eps=1e-12):
    return ((g * g).sum(1) + eps).sqrt()


def wgan_gp_steps(lib, steps=3, lam=10.0):
    """Critic and generator updates with the gradient penalty of Gulrajani et al. (2017) on
    8x8 digits; returns the parameters after `steps` of each, and the penalties seen."""
    is_torch = lib is not engine
    data = load_digits().x_train[:64].astype(np.float64)
    rng = np.random.default_rng(1)
    critic, generator = _critic_and_generator(lib)
    for model in (critic, generator):
        state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        weights = _weights(state)
        if is_torch:
            model.double()
            model.load_state_dict({k: lib.from_numpy(v) for k, v in weights.items()})
        else:
            model.double()
            model.load_state_dict(weights)
    optim_ = lib.optim
    opt_c = optim_.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    opt_g = optim_.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.9))
    tensor = lib.from_numpy if is_torch else engine.Tensor
    grad = lib.autograd.grad
    penalties = []
    for step in range(steps):
        real = tensor(data[16 * step : 16 * (step + 1)].copy())
        z = tensor(rng.standard_normal((16, 8)))
        mix = tensor(rng.uniform(0, 1, (16, 1)))
        opt_c.zero_grad()
        fake = generator(z).detach()
        mixed = mix * real + (1.0 - mix) * fake
        mixed.requires_grad_(True)
        (g,) = grad(critic(mixed).sum(), mixed, create_graph=True)
        penalty = ((_norm(g) - 1.0) ** 2).mean()
        loss = critic(fake).mean() - critic(real).mean() + lam * penalty
        loss.backward()
        opt_c.step()
        penalties.append(float(penalty.item()))
        opt_g.zero_grad()
        (-critic(generator(z)).mean()).backward()
        opt_g.step()
    params = [np.array(p.detach().numpy() if is_torch else p.data) for p in
              [*critic.parameters(), *generator.parameters()]]  # fmt: skip
    return params, penalties


def test_wgan_gp_training_steps_equal_pytorch(torch):
    ours, our_penalties = wgan_gp_steps(engine)
    theirs, their_penalties = wgan_gp_steps(torch)
    np.testing.assert_allclose(our_penalties, their_penalties, rtol=1e-10)
    assert len(ours) == len(theirs) == 10
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    assert max(np.abs(a - b).max() for a, b in zip(ours, theirs, strict=True)) < 1e-10


def test_the_penalty_reaches_the_critic_weights():
    """Without the second derivative the penalty would not move the weights at all (the
    output bias is the one parameter d critic / dx does not depend on)."""
    critic, _ = _critic_and_generator(engine)
    x = engine.Tensor(np.random.default_rng(0).uniform(0, 1, (4, 64)).astype(np.float32),
                      requires_grad=True)  # fmt: skip
    (g,) = engine.autograd.grad(critic(x).sum(), x, create_graph=True)
    ((_norm(g) - 1.0) ** 2).mean().backward()
    weights = [p for p in critic.parameters() if p.ndim == 2]
    assert len(weights) == 3
    assert all(p.grad is not None and np.abs(p.grad).max() > 0 for p in weights)


# --- the README --------------------------------------------------------------------------


def readme_blocks() -> list[str]:
    text = (ROOT / "engine" / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_derivatives_example_runs():
    (block,) = [b for b in readme_blocks() if "hessian(f)(x)" in b]
    exec(compile(block, "README.md", "exec"), {})


def test_readme_physics_informed_network_converges():
    (block,) = [b for b in readme_blocks() if "u(0)" in b or "sin(np.pi * grid)" in b]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["error"] < 2e-3, scope["error"]


def test_readme_worked_example_adds_a_primitive_with_all_its_derivatives():
    """The Softplus of "Adding an op", registered for the test and removed afterwards."""
    from engine.ops import REGISTRY, Elementwise, register
    from engine.tensor import apply

    (block,) = [b for b in readme_blocks() if "class Softplus" in b]
    scope = {"np": np, "register": register, "Elementwise": Elementwise}
    try:
        exec(compile(block, "README.md", "exec"), scope)
        softplus = REGISTRY["softplus"]
        x = np.array([-1.5, 0.2, 2.0])
        assert engine.autodiff.gradcheck(lambda t: apply(softplus, [t]), [x])
        h = np.asarray(hessian(lambda t: apply(softplus, [t]).sum())(x))
        s = 1 / (1 + np.exp(-x))
        np.testing.assert_allclose(h, np.diag(s * (1 - s)), rtol=1e-12)
    finally:
        REGISTRY.pop("softplus", None)


# --- Newton's method ---------------------------------------------------------------------


def _example(name: str):
    path = ROOT / "examples" / "engine" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_newton_cg_reaches_the_logistic_regression_optimum_in_under_ten_steps():
    example = _example("newton_cg")
    data = load_digits()
    x = data.x_train.astype(np.float64)
    labels = (data.y_train == 3).astype(np.int64)
    loss = example.logistic_loss(x, labels)
    w, norms = example.newton_cg(loss, np.zeros(x.shape[1] + 1))
    assert len(norms) - 1 < 10 and norms[-1] < 1e-10, norms
    assert norms[-1] < 1e-6 * norms[0]
    # the optimum: the exact Hessian (formed here only to check) gives no further step
    h = np.asarray(hessian(loss)(w))
    g = np.asarray(engine.autodiff.grad(loss)(w))
    assert np.linalg.norm(np.linalg.solve(h, g)) < 1e-10
    # and gradient descent from the same start is nowhere near after as many gradients
    w_gd = np.zeros_like(w)
    for _ in range(len(norms)):
        w_gd = w_gd - 1.0 * np.asarray(engine.autodiff.grad(loss)(w_gd))
    assert np.linalg.norm(np.asarray(engine.autodiff.grad(loss)(w_gd))) > 1e3 * norms[-1]


def test_hvp_inside_conjugate_gradient_solves_the_newton_system():
    example = _example("newton_cg")
    rng = np.random.default_rng(0)
    x, labels = rng.standard_normal((50, 5)), rng.integers(0, 2, 50)
    loss = example.logistic_loss(x, labels)
    w = rng.standard_normal(6) * 0.1
    b = rng.standard_normal(6)
    p = example.conjugate_gradient(lambda v: np.asarray(engine.autodiff.hvp(loss, w, v)), b)
    np.testing.assert_allclose(np.asarray(hessian(loss)(w)) @ p, b, rtol=1e-8, atol=1e-10)
