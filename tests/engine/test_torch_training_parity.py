"""One full training step of an MLP and a CNN from identical weights, engine vs torch (float64).

Loss and every gradient must agree within 1e-5 relative; the optimizer step must then give the
same weights.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import nn, optim
from engine.nn import functional as F
from tests.support.system import require_module


@pytest.fixture(scope="module")
def torch():
    return require_module("torch")


def _mlp(torch):
    ours = nn.Sequential(
        nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 5)
    )
    theirs = torch.nn.Sequential(
        torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.GELU(),
        torch.nn.Linear(16, 5),
    )  # fmt: skip
    return ours, theirs, (8, 20)


def _cnn(torch):
    ours = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Dropout(0.0), nn.Linear(8 * 2 * 2, 10),
    )  # fmt: skip
    t = torch.nn
    theirs = t.Sequential(
        t.Conv2d(1, 6, 3, padding=1), t.BatchNorm2d(6), t.ReLU(), t.MaxPool2d(2),
        t.Conv2d(6, 8, 3, padding=1), t.ReLU(), t.AvgPool2d(2),
        t.Flatten(), t.Dropout(0.0), t.Linear(8 * 2 * 2, 10),
    )  # fmt: skip
    return ours, theirs, (6, 1, 8, 8)


@pytest.mark.parametrize("build", [_mlp, _cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_one_training_step_matches_torch(torch, build, label_smoothing):
    ours, theirs, shape = build(torch)
    theirs.double()
    ours.double().load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    y = rng.integers(0, 5, size=shape[0])

    opt = optim.SGD(ours.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    t_opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):  # two steps, so the momentum buffer takes part
        opt.zero_grad()
        t_opt.zero_grad()
        loss = F.cross_entropy(
            ours(engine.Tensor(x)), engine.Tensor(y), label_smoothing=label_smoothing
        )
        t_loss = torch.nn.functional.cross_entropy(
            theirs(torch.from_numpy(x)), torch.from_numpy(y), label_smoothing=label_smoothing
        )
        loss.backward()
        t_loss.backward()
        assert loss.item() == pytest.approx(t_loss.item(), rel=1e-5)
        t_params = dict(theirs.named_parameters())
        for name, p in ours.named_parameters():
            want = t_params[name].grad.numpy()
            # atol only absorbs round-off where the exact gradient is zero (a conv bias
            # followed by BatchNorm)
            np.testing.assert_allclose(
                np.asarray(p.grad), want, rtol=1e-5, atol=1e-12, err_msg=name
            )
        opt.step()
        t_opt.step()
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(
            ours.state_dict()[key], value.numpy(), rtol=1e-5, atol=1e-10, err_msg=key
        )
