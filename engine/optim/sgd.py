"""SGD with momentum, dampening, Nesterov and weight decay: torch.optim.SGD's update rule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from engine.optim.optimizer import Optimizer
from engine.tensor import Tensor


class SGD(Optimizer):
    """g = grad + wd*p; buf = g (first step) else momentum*buf + (1-dampening)*g;
    g = g + momentum*buf (Nesterov) or buf; p -= lr*g."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"invalid SGD settings lr={lr}, momentum={momentum}, weight_decay={weight_decay}"
            )
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires momentum > 0 and zero dampening")
        super().__init__(
            params,
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                nesterov=nesterov,
                maximize=maximize,
            ),
        )

    def _update(self, p: Tensor, grad: np.ndarray, state: dict[str, Any], group: dict) -> None:
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * p.data
        momentum = group["momentum"]
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, copy=True)
            else:
                buf *= momentum
                if group["dampening"]:
                    buf += (1 - group["dampening"]) * grad
                else:
                    buf += grad
            if group["nesterov"]:
                step = np.multiply(buf, momentum, out=self._buffer(buf))
                step += grad
                grad = step
            else:
                grad = buf
        p.data -= np.multiply(grad, group["lr"], out=self._buffer(p.data, 1))
