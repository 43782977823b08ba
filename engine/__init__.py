"""engine: a define-by-run numpy tensor library with reverse and forward mode autodiff.

Names follow PyTorch: `Tensor`, `Parameter`, `no_grad`, `manual_seed`, `engine.functional`
(torch.nn.functional); `engine.autodiff` has grad/vjp/jvp/jacobian/gradcheck. Every primitive
op lives once in `engine.ops` with its forward, VJP, JVP and ONNX lowering.

Like `torch.nn` after `import torch`, the subpackages `engine.nn`, `engine.optim`, `engine.data`,
`engine.datasets`, `engine.checkpoint`, `engine.train`, `engine.autodiff` and `engine.functional`
are reachable as attributes of `engine`; they are imported on first access (PEP 562), so
`import engine` stays cheap for code that needs only tensors.
"""

import importlib as _importlib

import numpy as _np

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

_LAZY_SUBMODULES = frozenset(
    {"nn", "optim", "data", "datasets", "checkpoint", "train", "autodiff", "autograd", "functional"}
)


def __getattr__(name: str):
    """Import a subpackage on first attribute access: `engine.nn`, `engine.optim`, ..."""
    if name in _LAZY_SUBMODULES:
        module = _importlib.import_module(f"engine.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)


float32, float64, int32, int64, bool_ = _np.float32, _np.float64, _np.int32, _np.int64, _np.bool_

__all__ = [
    "Parameter", "Tensor", "arange", "cat", "clamp", "clip", "concat", "enable_grad", "erf",
    "exp", "full", "is_grad_enabled", "log", "manual_seed", "matmul", "maximum", "minimum",
    "no_grad", "ones", "ones_like", "ops", "rand", "randn", "random", "sqrt", "stack",
    "tensor", "tracing", "where", "zeros", "zeros_like", "float32", "float64", "int32",
    "int64", "bool_", "nn", "optim", "data", "datasets", "checkpoint", "train", "autodiff",
    "functional",
]  # fmt: skip
