"""Every op case against PyTorch (torch==2.13.0, CPU, float64): outputs and gradients."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Tensor
from tests.engine.test_ops import CASES, float_args
from tests.support.system import require_module

PARITY = [c for c in CASES if c.torch is not None]


@pytest.fixture(scope="module")
def torch():
    return require_module("torch")


def _torch_input(torch, a: np.ndarray, grad: bool):
    t = torch.from_numpy(np.array(a))
    if grad:
        t.requires_grad_(True)
    return t


def test_every_case_has_a_torch_reference():
    assert len(PARITY) == len(CASES)


@pytest.mark.parametrize("case", PARITY, ids=[c.id for c in PARITY])
def test_outputs_and_gradients_match_torch(torch, case):
    import torch.nn.functional as tf

    wrt = float_args(case)
    ours = [Tensor(a.copy(), requires_grad=i in wrt) for i, a in enumerate(case.inputs)]
    theirs = [_torch_input(torch, a, i in wrt) for i, a in enumerate(case.inputs)]
    out = case.fn(*ours)
    ref = case.torch(torch, tf, *theirs)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-10, atol=1e-12)

    cotangent = np.random.default_rng(1).standard_normal(out.shape)
    out.backward(cotangent)
    ref.backward(torch.from_numpy(cotangent))
    for i in wrt:
        expected = theirs[i].grad
        expected = np.zeros(case.inputs[i].shape) if expected is None else expected.numpy()
        np.testing.assert_allclose(ours[i].grad, expected, rtol=1e-9, atol=1e-12,
                                   err_msg=f"gradient of input {i}")  # fmt: skip


def test_float32_conv_and_loss_match_torch(torch):
    """The float32 hot path agrees with torch to float32 precision."""
    import torch.nn.functional as tf

    import engine.functional as F

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 12, 12)).astype(np.float32)
    w = (rng.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    target = rng.integers(0, 8, 4)
    ours = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    theirs = [torch.from_numpy(a.copy()).requires_grad_(True) for a in (x, w, b)]

    def pipeline(lib, tgt, x, w, b):
        h = lib.max_pool2d(lib.conv2d(x, w, b, padding=1).relu(), 2)
        return lib.cross_entropy(h.mean((2, 3)), tgt)

    loss = pipeline(F, target, *ours)
    ref = pipeline(tf, torch.from_numpy(target), *theirs)
    loss.backward()
    ref.backward()
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-5)
    for o, t in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(o.grad, t.grad.numpy(), rtol=1e-4, atol=1e-6)
