"""engine: a define-by-run numpy tensor library with reverse and forward mode autodiff.

Names follow PyTorch: `Tensor`, `Parameter`, `no_grad`, `manual_seed`, `engine.functional`
(torch.nn.functional); `engine.autodiff` has grad/vjp/jvp/jacobian/gradcheck. Every primitive
op lives once in `engine.ops` with its forward, VJP, JVP and ONNX lowering.
"""

import numpy as _np  # noqa: E402

from engine import ops, random, tracing
from engine.functional import (
    cat,
    clamp,
    clip,
    concat,
    erf,
    exp,
    log,
    matmul,
    maximum,
    minimum,
    sqrt,
    stack,
    where,
)
from engine.random import manual_seed
from engine.tensor import (
    Parameter,
    Tensor,
    arange,
    enable_grad,
    full,
    is_grad_enabled,
    no_grad,
    ones,
    ones_like,
    rand,
    randn,
    tensor,
    zeros,
    zeros_like,
)

float32, float64, int32, int64, bool_ = _np.float32, _np.float64, _np.int32, _np.int64, _np.bool_

__all__ = [
    "Parameter", "Tensor", "arange", "cat", "clamp", "clip", "concat", "enable_grad", "erf",
    "exp", "full", "is_grad_enabled", "log", "manual_seed", "matmul", "maximum", "minimum",
    "no_grad", "ones", "ones_like", "ops", "rand", "randn", "random", "sqrt", "stack",
    "tensor", "tracing", "where", "zeros", "zeros_like", "float32", "float64", "int32",
    "int64", "bool_",
]  # fmt: skip
