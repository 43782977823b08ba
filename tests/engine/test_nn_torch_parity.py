"""engine.nn modules against torch.nn in float64: identical weights, identical outputs."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import nn
from tests.support.system import require_module

RTOL = 1e-10


@pytest.fixture(scope="module")
def torch():
    t = require_module("torch")
    t.set_default_dtype(t.float64)
    yield t
    t.set_default_dtype(t.float32)


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _pair(torch, engine_module: nn.Module, torch_module) -> None:
    """Copy torch's (random) weights into the engine module, in float64."""
    engine_module.double()
    torch_module.double()
    engine_module.load_state_dict(torch_module.state_dict(), strict=True)


def _check(torch, ours: nn.Module, theirs, x: np.ndarray) -> None:
    """Forward outputs, then gradients of a random projection of them, must agree."""
    floating = x.dtype.kind == "f"
    ex = engine.Tensor(x, requires_grad=floating)
    tx = torch.from_numpy(x).requires_grad_(floating)
    got, want = ours(ex), theirs(tx)
    np.testing.assert_allclose(np.asarray(got.data), want.detach().numpy(), rtol=RTOL, atol=1e-12)
    w = np.random.default_rng(7).standard_normal(want.shape)
    (got * engine.Tensor(w)).sum().backward()
    (want * torch.from_numpy(w)).sum().backward()
    if floating:
        np.testing.assert_allclose(ex.grad, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    t_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, t_params[name].grad.numpy(), rtol=1e-9, atol=1e-12)


FORWARD_CASES = [
    (lambda: nn.Linear(7, 5), lambda t: t.nn.Linear(7, 5), (4, 7)),
    (lambda: nn.Linear(7, 5, bias=False), lambda t: t.nn.Linear(7, 5, bias=False), (3, 2, 7)),
    (lambda: nn.Conv2d(3, 4, 3), lambda t: t.nn.Conv2d(3, 4, 3), (2, 3, 7, 6)),
    (
        lambda: nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, dilation=(1, 2), groups=2),
        lambda t: t.nn.Conv2d(4, 6, (3, 2), stride=2, padding=1, dilation=(1, 2), groups=2),
        (2, 4, 9, 8),
    ),
    (lambda: nn.MaxPool2d(2), lambda t: t.nn.MaxPool2d(2), (2, 3, 6, 6)),
    (lambda: nn.MaxPool2d(3, 2, 1), lambda t: t.nn.MaxPool2d(3, 2, 1), (2, 3, 7, 7)),
    (lambda: nn.AvgPool2d(2), lambda t: t.nn.AvgPool2d(2), (2, 3, 6, 8)),
    (lambda: nn.AdaptiveAvgPool2d(1), lambda t: t.nn.AdaptiveAvgPool2d(1), (2, 3, 5, 5)),
    (
        lambda: nn.AdaptiveAvgPool2d((2, 3)),
        lambda t: t.nn.AdaptiveAvgPool2d((2, 3)),
        (2, 3, 4, 6),
    ),
    (lambda: nn.LayerNorm(6), lambda t: t.nn.LayerNorm(6), (3, 4, 6)),
    (lambda: nn.LayerNorm((4, 6)), lambda t: t.nn.LayerNorm((4, 6)), (3, 4, 6)),
    (lambda: nn.Flatten(), lambda t: t.nn.Flatten(), (2, 3, 4, 5)),
    (lambda: nn.ReLU(), lambda t: t.nn.ReLU(), (4, 5)),
    (lambda: nn.LeakyReLU(0.2), lambda t: t.nn.LeakyReLU(0.2), (4, 5)),
    (lambda: nn.GELU(), lambda t: t.nn.GELU(), (4, 5)),
    (lambda: nn.Sigmoid(), lambda t: t.nn.Sigmoid(), (4, 5)),
    (lambda: nn.Tanh(), lambda t: t.nn.Tanh(), (4, 5)),
    (lambda: nn.Softmax(1), lambda t: t.nn.Softmax(1), (4, 5)),
    (lambda: nn.LogSoftmax(1), lambda t: t.nn.LogSoftmax(1), (4, 5)),
]


@pytest.mark.parametrize(
    ("make_ours", "make_theirs", "shape"),
    [
        pytest.param(*case, id=f"{type(case[0]()).__name__}-{'x'.join(map(str, case[2]))}")
        for case in FORWARD_CASES
    ],
)
def test_module_forward_matches_torch(torch, make_ours, make_theirs, shape):
    theirs = make_theirs(torch)
    ours = make_ours()
    _pair(torch, ours, theirs)
    _check(torch, ours, theirs, _x(*shape))


@pytest.mark.parametrize("dims", [2, 4])
def test_batchnorm_train_eval_and_running_stats_match_torch(torch, dims):
    shape = (8, 3) if dims == 2 else (4, 3, 5, 5)
    ours = nn.BatchNorm1d(3) if dims == 2 else nn.BatchNorm2d(3)
    theirs = torch.nn.BatchNorm1d(3) if dims == 2 else torch.nn.BatchNorm2d(3)
    theirs.weight.data.uniform_(0.5, 1.5)
    theirs.bias.data.uniform_(-0.5, 0.5)
    _pair(torch, ours, theirs)
    for step in range(3):  # training batches update running stats
        _check(torch, ours, theirs, _x(*shape, seed=step) * 2 + 1)
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(ours.state_dict()[key], value.numpy(), rtol=RTOL, err_msg=key)
    assert int(ours.num_batches_tracked.data) == 3
    ours.eval()
    theirs.eval()
    _check(torch, ours, theirs, _x(*shape, seed=9))


def test_batchnorm_without_running_stats_or_affine_matches_torch(torch):
    ours = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    theirs = torch.nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    _pair(torch, ours, theirs)
    assert list(ours.state_dict()) == []
    for mode in ("train", "eval"):  # batch statistics in both modes
        getattr(ours, mode)()
        getattr(theirs, mode)()
        _check(torch, ours, theirs, _x(4, 3, 3, 3) * 3 - 1)


def test_batchnorm_cumulative_average_when_momentum_is_none(torch):
    ours, theirs = nn.BatchNorm1d(4, momentum=None), torch.nn.BatchNorm1d(4, momentum=None)
    _pair(torch, ours, theirs)
    for step in range(3):
        _check(torch, ours, theirs, _x(6, 4, seed=step) + step)
    np.testing.assert_allclose(ours.running_var.data, theirs.running_var.numpy(), rtol=RTOL)


def test_embedding_matches_torch(torch):
    ours, theirs = nn.Embedding(10, 4), torch.nn.Embedding(10, 4)
    _pair(torch, ours, theirs)
    _check(torch, ours, theirs, np.array([[1, 2, 9], [0, 0, 5]]))  # 0 twice: gradients add


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_outputs_states_and_gradients_match_torch(torch, num_layers):
    theirs = torch.nn.LSTM(5, 4, num_layers=num_layers, batch_first=True)
    ours = nn.LSTM(5, 4, num_layers=num_layers, batch_first=True)
    assert [k for k, _ in ours.named_parameters()] == [k for k, _ in theirs.named_parameters()]
    _pair(torch, ours, theirs)
    x = _x(3, 6, 5)
    h0, c0 = _x(num_layers, 3, 4, seed=1), _x(num_layers, 3, 4, seed=2)
    out, (h, c) = ours(engine.Tensor(x), (engine.Tensor(h0), engine.Tensor(c0)))
    t_out, (t_h, t_c) = theirs(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    for a, b in [(out, t_out), (h, t_h), (c, t_c)]:
        assert a.shape == tuple(b.shape)
        np.testing.assert_allclose(a.data, b.detach().numpy(), rtol=1e-9, atol=1e-12)
    (out.sum() + h.sum() * 2).backward()
    (t_out.sum() + t_h.sum() * 2).backward()
    for (name, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        np.testing.assert_allclose(
            np.asarray(p.grad), tp.grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=name
        )


def test_lstm_default_zero_state(torch):
    theirs = torch.nn.LSTM(3, 2, batch_first=True)
    ours = nn.LSTM(3, 2)
    _pair(torch, ours, theirs)
    x = _x(2, 4, 3)
    out, (h, c) = ours(engine.Tensor(x))
    t_out, (t_h, t_c) = theirs(torch.from_numpy(x))
    np.testing.assert_allclose(out.data, t_out.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c.data, t_c.detach().numpy(), rtol=1e-9, atol=1e-12)


def test_default_initialisation_bounds_match_torch_formulas(torch):
    engine.manual_seed(0)
    lin, conv = nn.Linear(100, 50), nn.Conv2d(4, 8, 3)
    # kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and bias.
    for layer, fan_in in [(lin, 100), (conv, 36)]:
        bound = 1 / np.sqrt(fan_in)
        for p in (layer.weight, layer.bias):
            assert np.abs(p.data).max() <= bound
            assert np.abs(p.data).max() > 0.9 * bound
        assert layer.weight.data.dtype == np.float32
        assert abs(layer.weight.data.std() - bound / np.sqrt(3)) < 0.1 * bound
