"""Gradient utilities (`clip_grad_norm_`), where PyTorch users look for them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from engine.tensor import Tensor


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """Scale gradients in place so their joint norm is at most `max_norm`; return that norm.

    Same formula as torch: coefficient max_norm / (total_norm + 1e-6), applied only when < 1.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [np.asarray(p.grad) for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm_type = float(norm_type)
    if norm_type == float("inf"):
        total = max(float(np.max(np.abs(g))) for g in grads)
    else:
        total = float(
            np.sum([np.sum(np.abs(g.astype(np.float64)) ** norm_type) for g in grads])
            ** (1.0 / norm_type)
        )
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {total}")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad = np.asarray(p.grad) * np.asarray(coef, dtype=np.asarray(p.grad).dtype)
    return total
