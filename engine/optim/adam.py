"""Adam and AdamW with torch.optim's exact update (bias correction, eps outside the sqrt)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from engine.optim.optimizer import Optimizer
from engine.tensor import Tensor


class Adam(Optimizer):
    """Adam (Kingma & Ba); `weight_decay` is L2 added to the gradient, as in torch.optim.Adam."""

    decoupled_weight_decay = False
    #: What `weight_decay=None` means: torch's defaults, 0 for Adam and 1e-2 for AdamW.
    default_weight_decay = 0.0

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float | None = None,
        amsgrad: bool = False,
        maximize: bool = False,
    ) -> None:
        if weight_decay is None:
            weight_decay = self.default_weight_decay
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"invalid {type(self).__name__} settings lr={lr}, betas={betas}, eps={eps}, "
                f"weight_decay={weight_decay}"
            )
        super().__init__(
            params,
            dict(
                lr=lr,
                betas=tuple(betas),
                eps=eps,
                weight_decay=weight_decay,
                amsgrad=amsgrad,
                maximize=maximize,
            ),
        )

    def _update(self, p: Tensor, grad: np.ndarray, state: dict[str, Any], group: dict) -> None:
        lr, (beta1, beta2), eps, wd = (
            group["lr"],
            group["betas"],
            group["eps"],
            group["weight_decay"],
        )
        if group["maximize"]:
            grad = -grad
        if wd:
            if self.decoupled_weight_decay:
                p.data *= 1 - lr * wd
            else:
                grad = grad + wd * p.data
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        step = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        work = self._buffer(p.data)
        np.subtract(grad, m, out=work)  # m.lerp_(grad, 1 - beta1)
        work *= 1 - beta1
        m += work
        np.multiply(grad, grad, out=work)  # v = beta2 * v + (1 - beta2) * grad^2
        work *= 1 - beta2
        v *= beta2
        v += work
        if group["amsgrad"]:
            np.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
            v = state["max_exp_avg_sq"]
        denom = np.sqrt(v, out=work)  # sqrt(v) / sqrt(1 - beta2^t) + eps
        denom /= math.sqrt(1 - beta2**step)
        denom += eps
        update = np.divide(m, denom, out=work)  # p -= lr / (1 - beta1^t) * m / denom
        update *= lr / (1 - beta1**step)
        p.data -= update


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p *= 1 - lr*wd before the step."""

    decoupled_weight_decay = True
    default_weight_decay = 1e-2
