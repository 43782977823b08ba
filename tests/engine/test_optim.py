"""Optimizers and schedulers against torch.optim (float64), and their state_dicts."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import optim
from engine.nn.utils import clip_grad_norm_
from tests.support.system import require_module


@pytest.fixture(scope="module")
def torch():
    return require_module("torch")


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((4, 3)), rng.standard_normal(3)]


def _grads(step: int, shapes):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s) for s in shapes]


def _run_both(torch, ours_cls, theirs_cls, kwargs, steps=6):
    init = _problem()
    ours_params = [engine.Parameter(a.copy()) for a in init]
    theirs_params = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    ours, theirs = ours_cls(ours_params, **kwargs), theirs_cls(theirs_params, **kwargs)
    for step in range(steps):
        grads = _grads(step, [a.shape for a in init])
        for p, tp, g in zip(ours_params, theirs_params, grads, strict=True):
            p.grad = g.copy()
            tp.grad = torch.from_numpy(g.copy())
        ours.step()
        theirs.step()
        for p, tp in zip(ours_params, theirs_params, strict=True):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
    return ours, ours_params


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.1, weight_decay=0.1, maximize=True),
]


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=lambda k: ",".join(k))
def test_sgd_matches_torch(torch, kwargs):
    _run_both(torch, optim.SGD, torch.optim.SGD, kwargs)


ADAM_CASES = [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    dict(lr=0.01, amsgrad=True),
]


@pytest.mark.parametrize("kwargs", ADAM_CASES, ids=lambda k: ",".join(k))
def test_adam_matches_torch(torch, kwargs):
    _run_both(torch, optim.Adam, torch.optim.Adam, kwargs)


@pytest.mark.parametrize("kwargs", [dict(lr=0.01), *ADAM_CASES[1:]], ids=lambda k: ",".join(k))
def test_adamw_matches_torch(torch, kwargs):
    _run_both(torch, optim.AdamW, torch.optim.AdamW, kwargs)


def test_adamw_default_weight_decay_is_decoupled():
    assert optim.AdamW([engine.Parameter(np.zeros(1))]).param_groups[0]["weight_decay"] == 1e-2
    p = engine.Parameter(np.ones(2))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = np.zeros(2)
    opt.step()  # zero gradient: only the decay moves the weight
    np.testing.assert_allclose(p.data, 1 - 0.1 * 0.5)


@pytest.mark.parametrize(
    ("ours_cls", "theirs_name", "kwargs"),
    [
        (optim.StepLR, "StepLR", dict(step_size=3, gamma=0.5)),
        (optim.CosineAnnealingLR, "CosineAnnealingLR", dict(T_max=5, eta_min=0.01)),
    ],
)
def test_schedulers_match_torch(torch, ours_cls, theirs_name, kwargs):
    p = engine.Parameter(np.zeros(1))
    tp = torch.zeros(1, requires_grad=True)
    ours_opt, theirs_opt = optim.SGD([p], lr=0.2), torch.optim.SGD([tp], lr=0.2)
    ours = ours_cls(ours_opt, **kwargs)
    theirs = getattr(torch.optim.lr_scheduler, theirs_name)(theirs_opt, **kwargs)
    for _ in range(14):  # past T_max: the cosine rises again, as torch's does
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=1e-12)
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(
            theirs_opt.param_groups[0]["lr"], rel=1e-12
        )
        theirs_opt.step()
        ours.step()
        theirs.step()


def test_optimizer_state_dict_resumes_exactly():
    init = _problem()
    a = [engine.Parameter(x.copy()) for x in init]
    b = [engine.Parameter(x.copy()) for x in init]
    opt_a = optim.Adam(a, lr=0.01, amsgrad=True)
    for step in range(3):
        for p, g in zip(a, _grads(step, [x.shape for x in init]), strict=True):
            p.grad = g
        opt_a.step()
    saved = opt_a.state_dict()
    for p, q in zip(a, b, strict=True):
        q.data = p.data.copy()
    opt_b = optim.Adam(b, lr=0.5)
    opt_b.load_state_dict(saved)
    assert opt_b.param_groups[0]["lr"] == 0.01
    for step in range(3, 6):
        for p, q, g in zip(a, b, _grads(step, [x.shape for x in init]), strict=True):
            p.grad, q.grad = g, g.copy()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p.data, q.data)


def test_optimizer_state_dict_rejects_other_shapes():
    opt = optim.SGD([engine.Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
    other = optim.SGD([engine.Parameter(np.zeros(2)), engine.Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="does not match this optimizer's parameter groups"):
        opt.load_state_dict(other.state_dict())


def test_param_groups_have_their_own_hyperparameters():
    a, b = engine.Parameter(np.ones(1)), engine.Parameter(np.ones(1))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1)
    a.grad, b.grad = np.ones(1), np.ones(1)
    opt.step()
    assert a.data[0] == pytest.approx(0.9) and b.data[0] == pytest.approx(0.0)
    opt.zero_grad()
    assert a.grad is None


def test_bad_settings_are_rejected():
    p = [engine.Parameter(np.zeros(1))]
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="invalid Adam settings"):
        optim.Adam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)


def test_clip_grad_norm_matches_torch(torch):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal((3, 4)) * 5, rng.standard_normal(4)]
    ours = [engine.Parameter(np.zeros_like(g)) for g in grads]
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, tp, g in zip(ours, theirs, grads, strict=True):
        p.grad, tp.grad = g.copy(), torch.from_numpy(g.copy())
    for norm_type in (2.0, float("inf")):
        total = clip_grad_norm_(ours, 1.0, norm_type)
        want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
        assert total == pytest.approx(float(want), rel=1e-12)
        for p, tp in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(p.grad, tp.grad.numpy(), rtol=1e-12)
    assert optim.clip_grad_norm_ is clip_grad_norm_
