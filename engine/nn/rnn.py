"""LSTM: an honest recurrent loop through the tape, with PyTorch's gate order and names.

Parameters per layer k are `weight_ih_lk` [4H, in], `weight_hh_lk` [4H, H], `bias_ih_lk` and
`bias_hh_lk` [4H], gates stacked in torch's order (input, forget, cell, output), so a
`torch.nn.LSTM`'s state_dict loads unchanged. Each step is ordinary engine ops, so backward runs
through time and the exporter sees the unrolled loop.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import engine
from engine import functional as F
from engine.nn import init
from engine.nn.module import Module
from engine.tensor import Parameter, Tensor


class LSTM(Module):
    """Multi-layer LSTM over batch-first input [N, T, input_size].

    Returns `output` [N, T, H] (the last layer's hidden state at every step) and `(h_n, c_n)`,
    each [num_layers, N, H]. Initial state `(h_0, c_0)` defaults to zeros.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dtype: Any = np.float32,
    ) -> None:
        super().__init__()
        if not batch_first:
            raise ValueError("LSTM supports batch_first=True only (input [N, T, features])")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        bound = 1.0 / math.sqrt(hidden_size)
        for layer in range(num_layers):
            width = input_size if layer == 0 else hidden_size
            shapes = {
                f"weight_ih_l{layer}": (4 * hidden_size, width),
                f"weight_hh_l{layer}": (4 * hidden_size, hidden_size),
            }
            if bias:
                shapes[f"bias_ih_l{layer}"] = (4 * hidden_size,)
                shapes[f"bias_hh_l{layer}"] = (4 * hidden_size,)
            for name, shape in shapes.items():
                param = Parameter(np.zeros(shape, dtype=dtype))
                init.uniform_(param, -bound, bound)
                self.register_parameter(name, param)

    def forward(
        self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"LSTM expects input [batch, time, {self.input_size}], got shape {tuple(x.shape)}"
            )
        n, steps, _ = x.shape
        hidden = self.hidden_size
        if hx is None:
            zeros = np.zeros((n, hidden), dtype=self.weight_ih_l0.data.dtype)
            h0 = [Tensor(zeros)] * self.num_layers
            c0 = [Tensor(zeros)] * self.num_layers
        else:
            h0 = [hx[0][k] for k in range(self.num_layers)]
            c0 = [hx[1][k] for k in range(self.num_layers)]
        layer_input = x
        h_last, c_last = [], []
        for k in range(self.num_layers):
            w_ih = getattr(self, f"weight_ih_l{k}")
            w_hh = getattr(self, f"weight_hh_l{k}")
            b_ih = getattr(self, f"bias_ih_l{k}") if self.bias else None
            b_hh = getattr(self, f"bias_hh_l{k}") if self.bias else None
            # One GEMM for the input projection of every time step: [N, T, 4H].
            projected = F.linear(layer_input, w_ih, b_ih)
            h, c = h0[k], c0[k]
            outputs = []
            for t in range(steps):
                gates = projected[:, t, :] + F.linear(h, w_hh, b_hh)
                i = F.sigmoid(gates[:, 0:hidden])
                f = F.sigmoid(gates[:, hidden : 2 * hidden])
                g = F.tanh(gates[:, 2 * hidden : 3 * hidden])
                o = F.sigmoid(gates[:, 3 * hidden :])
                c = f * c + i * g
                h = o * F.tanh(c)
                outputs.append(h)
            layer_input = engine.stack(outputs, 1)
            h_last.append(h)
            c_last.append(c)
        return layer_input, (engine.stack(h_last, 0), engine.stack(c_last, 0))

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, batch_first=True"
        )
