"""Tensor: a numpy array with a tape entry for reverse mode and tangents for forward mode.

`apply(op, inputs, **attrs)` is the only place a primitive runs: it computes the forward
value, records a Node when gradients are wanted, pushes tangents through the op's JVP when
dual numbers are live, and reports the application to an active trace.

Derivative rules are written in engine ops, so the reverse walk (`backward`, `grad`) can record
the gradient computation itself (`create_graph=True`) and tangents flow through it: that is what
makes derivatives of derivatives work in both modes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from engine import _memory, tracing
from engine.ops import REGISTRY, Primitive
from engine.ops._util import norm_axes

_grad_enabled = True
# Forward mode: each live dual level has a unique id (so a tangent left on a tensor by a level
# that has ended never matches a later one). Levels nest: while the JVP rule of level k runs,
# only the levels outside it are visible, so a tangent's own tangents belong to outer levels.
_levels: list[int] = []
_visible = 0  # how many of _levels (from the outermost) apply() sees
_level_ids = itertools.count(1)
_creation = itertools.count()
_recorder: list | None = None  # while set, apply() appends each taped output (creation order)

P = REGISTRY


class Node:
    """A tape entry: the op, its input Tensors and arrays, attributes, output and saved state.

    `output` (the output Tensor) and `higher` (whether the rule's result will itself be
    differentiated) are set only while a derivative rule runs, so the tape holds no cycles.
    """

    __slots__ = ("op", "inputs", "xs", "attrs", "out", "saved", "needs", "output", "higher")

    def __init__(self, op, inputs, xs, attrs, out, saved):
        self.op = op
        self.inputs = inputs
        self.xs = xs
        self.attrs = attrs
        self.out = out
        self.saved = saved
        self.needs = tuple(t.requires_grad for t in inputs)
        self.output = None
        self.higher = False


def apply(op: type[Primitive], inputs: Sequence[Tensor], **attrs: Any) -> Tensor:
    """Run primitive `op` on Tensors: forward, tape, tangent and trace in one place."""
    return _run(op, inputs, attrs)[0]


def apply_saving(op: type[Primitive], inputs: Sequence[Tensor], **attrs: Any) -> tuple:
    """`apply` that also returns what the op's forward saved (batch_norm's batch statistics)."""
    return _run(op, inputs, attrs)


def _run(op: type[Primitive], inputs: Sequence[Tensor], attrs: dict) -> tuple:
    xs = [t.data for t in inputs]
    if op.saves:
        out, saved = op.forward(*xs, **attrs)
    else:
        out, saved = op.forward(*xs, **attrs), None
    if type(out) is not np.ndarray:
        out = np.asarray(out)
    differentiable = op.differentiable and out.dtype.kind == "f"
    result = object.__new__(Tensor)
    result.data = out
    result._seq = next(_creation)
    result.requires_grad = False
    node = None
    if _grad_enabled and differentiable:
        for t in inputs:
            if t.requires_grad:
                result.requires_grad = True
                node = result._node = Node(op, inputs, xs, attrs, out, saved)
                if _recorder is not None:
                    _recorder.append(result)
                break
    if _visible and differentiable:
        levels = _live_levels(inputs)
        if levels:
            if node is None:
                node = Node(op, inputs, xs, attrs, out, saved)
            _push_tangents(op, node, result, levels)
    if tracing._live and tracing.active():
        tracing.record(op, inputs, attrs, [result])
    return result, saved


def _live_levels(tensors: Sequence[Tensor]) -> list[int]:
    """Positions in _levels (visible ones only) at which some of `tensors` carry a tangent."""
    found = []
    for k in range(_visible):
        level = _levels[k]
        for t in tensors:
            if t._tan is not None and level in t._tan:
                found.append(k)
                break
    return found


def _push_tangents(op, node, result, positions):
    """The output's tangent at each live level, from the op's JVP rule run with that level and
    the ones inside it hidden."""
    global _visible
    visible = _visible
    for k in positions:
        level = _levels[k]
        tangents = [t._tan.get(level) if t._tan is not None else None for t in node.inputs]
        _visible = k
        node.output = result
        node.higher = k > 0 or (
            _grad_enabled
            and any(t is not None and t.requires_grad for t in (*node.inputs, *tangents))
        )
        try:
            if not op.higher_order and node.higher:
                raise _first_order_only(op, "push a tangent through it inside another transform")
            out_t = op.jvp(tangents, node)
        finally:
            _visible = visible
            node.output = None
        if out_t is None:
            continue
        if not isinstance(out_t, Tensor):
            out_t = Tensor._wrap(np.asarray(out_t))
        _visible = k
        try:
            if out_t.dtype != result.dtype:
                out_t = out_t.astype(result.dtype)
            if out_t.shape != result.shape:
                out_t = out_t.broadcast_to(result.shape)
        finally:
            _visible = visible
        if result._tan is None:
            result._tan = {}
        result._tan[level] = out_t


def _first_order_only(op, doing: str) -> NotImplementedError:
    return NotImplementedError(
        f"primitive {op.name!r} has a first-order derivative only (higher_order = False): "
        f"cannot {doing}; write its derivative rule in engine ops to allow higher derivatives"
    )


def _as_array(data: Any, dtype: Any = None) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.asarray(data, dtype=dtype)
    if isinstance(data, (np.ndarray, np.generic)):
        return np.asarray(data)
    arr = np.asarray(data)
    if arr.dtype == np.float64:  # Python floats default to float32 like torch
        arr = arr.astype(np.float32)
    return arr


class Tensor:
    """An n-dimensional array (numpy underneath) that records operations for autodiff."""

    __slots__ = ("data", "requires_grad", "_seq", "__weakref__", "__dict__")
    __array_priority__ = 1000  # ndarray (op) Tensor defers to Tensor's reflected operators
    # Set on few tensors, so class-level defaults (instances that set them use __dict__):
    grad: Any = None  # an ndarray, or a Tensor after backward(create_graph=True)
    _node: Node | None = None  # the tape entry that made this tensor
    _tan: dict | None = None  # {dual level id: tangent Tensor}
    _retain = False  # keep .grad on a non-leaf (retain_grad)

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        self.data = _as_array(data, dtype)
        if requires_grad and self.data.dtype.kind not in "fc":
            raise TypeError(f"only floating tensors can require gradients, not {self.dtype}")
        self.requires_grad = bool(requires_grad)
        self._seq = next(_creation)  # a tensor depends only on tensors made before it

    @classmethod
    def _wrap(cls, data: np.ndarray, requires_grad: bool = False) -> Tensor:
        t = object.__new__(Tensor)
        t.data = data
        t.requires_grad = requires_grad
        t._seq = next(_creation)
        return t

    @property
    def tangent(self) -> np.ndarray | None:
        """The forward-mode tangent as an array (of the innermost dual level that set one)."""
        if not self._tan:
            return None
        return self._tan[max(self._tan)].data

    @tangent.setter
    def tangent(self, value: Any) -> None:
        if value is None:
            self._tan = None
            return
        level = _levels[-1] if _levels else 0
        tan = value if isinstance(value, Tensor) else Tensor(np.asarray(value, dtype=self.dtype))
        self._tan = {**(self._tan or {}), level: tan}

    # --- introspection ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    def size(self, dim: int | None = None) -> tuple[int, ...] | int:
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return self.data.size

    def dim(self) -> int:
        return self.data.ndim

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> Any:
        return self.data.item()

    def tolist(self) -> Any:
        return self.data.tolist()

    def __len__(self) -> int:
        return len(self.data)

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.data)

    def __int__(self) -> int:
        return int(self.data)

    def __iter__(self) -> Iterator[Tensor]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        body = np.array2string(self.data, separator=", ", prefix="tensor(")
        extra = ", requires_grad=True" if self.requires_grad else ""
        if self.dtype != np.float32:
            extra = f", dtype={self.dtype}" + extra
        return f"tensor({body}{extra})"

    __hash__ = object.__hash__

    # --- autograd ---------------------------------------------------------------------
    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        if requires_grad and self.data.dtype.kind not in "fc":
            raise TypeError(f"only floating tensors can require gradients, not {self.dtype}")
        self.requires_grad = requires_grad
        return self

    def retain_grad(self) -> None:
        """Keep .grad on this non-leaf tensor after backward (like torch)."""
        self._retain = True

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return apply(P["detach"], [self])

    def backward(self, grad: Any = None, create_graph: bool = False,
                 inputs: Sequence[Tensor] | None = None) -> None:  # fmt: skip
        """Accumulate d(self)/d(leaf) into every leaf's .grad (iterative reverse walk).

        With `create_graph=True` the walk is itself recorded: each .grad is then a Tensor that
        can be differentiated again (a gradient penalty, a Hessian-vector product), as in torch.
        `inputs` limits the accumulation to those tensors.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if grad is None and self.data.size != 1:
            raise RuntimeError(
                f"backward() needs a grad argument for a non-scalar output {self.shape}"
            )
        backward([self], [grad], create_graph=create_graph, inputs=inputs)

    # --- arithmetic -------------------------------------------------------------------
    def _lift(self, other: Any) -> Tensor:
        if isinstance(other, Tensor):
            return other
        if isinstance(other, np.ndarray):
            return Tensor._wrap(other)
        if self.data.dtype.kind in "fc" or isinstance(other, (bool, int, np.integer)):
            return Tensor._wrap(np.asarray(other, dtype=self.data.dtype))
        return Tensor._wrap(np.asarray(other, dtype=np.float32))

    def __add__(self, o):
        return apply(P["add"], [self, self._lift(o)])

    def __radd__(self, o):
        return apply(P["add"], [self._lift(o), self])

    def __sub__(self, o):
        return apply(P["sub"], [self, self._lift(o)])

    def __rsub__(self, o):
        return apply(P["sub"], [self._lift(o), self])

    def __mul__(self, o):
        return apply(P["mul"], [self, self._lift(o)])

    def __rmul__(self, o):
        return apply(P["mul"], [self._lift(o), self])

    def __truediv__(self, o):
        return apply(P["div"], [self, self._lift(o)])

    def __rtruediv__(self, o):
        return apply(P["div"], [self._lift(o), self])

    def __pow__(self, o):
        return apply(P["pow"], [self, self._lift(o)])

    def __rpow__(self, o):
        return apply(P["pow"], [self._lift(o), self])

    def __matmul__(self, o):
        return apply(P["matmul"], [self, self._lift(o)])

    def __rmatmul__(self, o):
        return apply(P["matmul"], [self._lift(o), self])

    def __neg__(self):
        return apply(P["neg"], [self])

    def __pos__(self):
        return self

    def __abs__(self):
        return self.abs()

    def __eq__(self, o):  # type: ignore[override]
        return apply(P["eq"], [self, self._lift(o)])

    def __ne__(self, o):  # type: ignore[override]
        return apply(P["ne"], [self, self._lift(o)])

    def __lt__(self, o):
        return apply(P["lt"], [self, self._lift(o)])

    def __le__(self, o):
        return apply(P["le"], [self, self._lift(o)])

    def __gt__(self, o):
        return apply(P["gt"], [self, self._lift(o)])

    def __ge__(self, o):
        return apply(P["ge"], [self, self._lift(o)])

    # --- element-wise -----------------------------------------------------------------
    def exp(self) -> Tensor:
        return apply(P["exp"], [self])

    def log(self) -> Tensor:
        return apply(P["log"], [self])

    def sqrt(self) -> Tensor:
        return apply(P["sqrt"], [self])

    def abs(self) -> Tensor:
        return apply(P["abs"], [self])

    def tanh(self) -> Tensor:
        return apply(P["tanh"], [self])

    def sigmoid(self) -> Tensor:
        return apply(P["sigmoid"], [self])

    def relu(self) -> Tensor:
        return apply(P["relu"], [self])

    def clip(self, min: float | None = None, max: float | None = None) -> Tensor:
        return apply(P["clip"], [self], min=min, max=max)

    clamp = clip

    def astype(self, dtype: Any) -> Tensor:
        return apply(P["cast"], [self], dtype=np.dtype(dtype))

    def float(self) -> Tensor:
        return self.astype(np.float32)

    def double(self) -> Tensor:
        return self.astype(np.float64)

    def long(self) -> Tensor:
        return self.astype(np.int64)

    def int(self) -> Tensor:
        return self.astype(np.int32)

    def bool(self) -> Tensor:
        return self.astype(np.bool_)

    def softmax(self, dim: int = -1) -> Tensor:
        return apply(P["softmax"], [self], axis=dim)

    def log_softmax(self, dim: int = -1) -> Tensor:
        return apply(P["log_softmax"], [self], axis=dim)

    # --- reductions -------------------------------------------------------------------
    def _axes(self, dim, axis):
        return norm_axes(dim if dim is not None else axis, self.ndim)

    def sum(self, dim=None, keepdim=False, *, axis=None, keepdims=None) -> Tensor:
        keep = keepdim if keepdims is None else keepdims
        return apply(P["sum"], [self], axes=self._axes(dim, axis), keepdims=bool(keep))

    def mean(self, dim=None, keepdim=False, *, axis=None, keepdims=None) -> Tensor:
        keep = keepdim if keepdims is None else keepdims
        return apply(P["mean"], [self], axes=self._axes(dim, axis), keepdims=bool(keep))

    def max(self, dim=None, keepdim=False, *, axis=None, keepdims=None) -> Tensor:
        """Largest values over `dim` (values only, like torch.amax; see argmax for indices)."""
        keep = keepdim if keepdims is None else keepdims
        return apply(P["max"], [self], axes=self._axes(dim, axis), keepdims=bool(keep))

    amax = max

    def min(self, dim=None, keepdim=False, *, axis=None, keepdims=None) -> Tensor:
        return -((-self).max(dim, keepdim, axis=axis, keepdims=keepdims))

    amin = min

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> Tensor:
        return apply(P["argmax"], [self], axis=dim, keepdims=keepdim)

    def var(self, dim=None, unbiased=True, keepdim=False, *, correction=None, axis=None,
            keepdims=None) -> Tensor:  # fmt: skip
        """Variance; unbiased (correction=1) by default like torch."""
        axes = self._axes(dim, axis)
        keep = keepdim if keepdims is None else keepdims
        corr = (1 if unbiased else 0) if correction is None else correction
        n = math.prod(self.shape[a] for a in axes)
        centred = self - self.mean(axes, keepdim=True)
        return (centred * centred).sum(axes, keepdim=keep) / max(n - corr, 0)

    def std(self, dim=None, unbiased=True, keepdim=False, **kw) -> Tensor:
        return self.var(dim, unbiased, keepdim, **kw).sqrt()

    # --- shape ------------------------------------------------------------------------
    def reshape(self, *shape) -> Tensor:
        resolved = _resolve_shape(_shape_arg(shape), self.data.size)
        return apply(P["reshape"], [self], shape=resolved)

    view = reshape

    def transpose(self, dim0: int = 0, dim1: int = 1) -> Tensor:
        perm = list(range(self.ndim))
        perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
        return apply(P["transpose"], [self], perm=tuple(perm))

    def permute(self, *dims) -> Tensor:
        dims = tuple(d % self.ndim for d in _shape_arg(dims))
        return apply(P["transpose"], [self], perm=dims)

    @property
    def T(self) -> Tensor:
        return apply(P["transpose"], [self], perm=tuple(reversed(range(self.ndim))))

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        if self.ndim == 0:
            return self.reshape(1)
        s, e = start_dim % self.ndim, end_dim % self.ndim
        shape = self.shape[:s] + (math.prod(self.shape[s : e + 1]),) + self.shape[e + 1 :]
        return self.reshape(shape)

    def squeeze(self, dim: int | Sequence[int] | None = None) -> Tensor:
        if dim is None:
            axes = tuple(i for i, n in enumerate(self.shape) if n == 1)
        else:
            axes = tuple(a for a in norm_axes(dim, self.ndim) if self.shape[a] == 1)
        return apply(P["squeeze"], [self], axes=axes) if axes else self

    def unsqueeze(self, dim: int) -> Tensor:
        return apply(P["unsqueeze"], [self], axes=(dim % (self.ndim + 1),))

    def expand(self, *shape) -> Tensor:
        shape = _shape_arg(shape)
        lead = len(shape) - self.ndim
        full = tuple(self.shape[i - lead] if n == -1 else n for i, n in enumerate(shape))
        return self.broadcast_to(full)

    def broadcast_to(self, shape: Sequence[int]) -> Tensor:
        return apply(P["broadcast_to"], [self], shape=tuple(shape))

    def __getitem__(self, index) -> Tensor:
        return apply(P["getitem"], [self], index=_norm_index(index))

    def __setitem__(self, index, value) -> None:
        """In-place write into the data (for tensors not being differentiated)."""
        if self.requires_grad and _grad_enabled:
            raise RuntimeError("in-place assignment into a tensor that requires grad")
        self.data[_norm_index(index)] = value.data if isinstance(value, Tensor) else value

    # --- in-place updates of the data (not recorded; for init code and optimizers) -----
    def _inplace(self, name: str) -> np.ndarray:
        if self.requires_grad and _grad_enabled and self._node is None:
            raise RuntimeError(
                f"{name} on a leaf that requires grad: wrap it in engine.no_grad() like torch"
            )
        return self.data

    def zero_(self) -> Tensor:
        self._inplace("zero_")[...] = 0
        return self

    def fill_(self, value: float) -> Tensor:
        self._inplace("fill_")[...] = value
        return self

    def copy_(self, src: Any) -> Tensor:
        self._inplace("copy_")[...] = src.data if isinstance(src, Tensor) else src
        return self

    def add_(self, other: Any, alpha: float = 1.0) -> Tensor:
        data = self._inplace("add_")
        data += alpha * (other.data if isinstance(other, Tensor) else np.asarray(other))
        return self

    def mul_(self, other: Any) -> Tensor:
        data = self._inplace("mul_")
        data *= other.data if isinstance(other, Tensor) else other
        return self


def _shape_arg(shape: tuple) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(n) for n in shape)


def _resolve_shape(shape: tuple[int, ...], size: int) -> tuple[int, ...]:
    if -1 not in shape:
        if math.prod(shape) != size:
            raise ValueError(f"cannot reshape {size} elements into shape {shape}")
        return shape
    known = math.prod(n for n in shape if n != -1)
    if shape.count(-1) > 1 or known == 0 or size % known:
        raise ValueError(f"cannot reshape {size} elements into shape {shape}")
    return tuple(size // known if n == -1 else n for n in shape)


def _norm_index(index) -> tuple:
    if not isinstance(index, tuple):
        index = (index,)
    out = []
    for i in index:
        if isinstance(i, Tensor):
            i = i.data
        if isinstance(i, list):
            i = np.asarray(i)
        if isinstance(i, np.ndarray) and i.ndim == 0 and i.dtype.kind in "iu":
            i = int(i)
        out.append(i)
    return tuple(out)


class Parameter(Tensor):
    """A Tensor that is a model weight: requires grad; the exporter makes it an initializer."""

    def __init__(self, data: Any, requires_grad: bool = True, dtype: Any = None) -> None:
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


# --- the reverse walk ---------------------------------------------------------------------


def _seed(t: Tensor, g: Any) -> Tensor:
    """The cotangent a walk starts from: ones for a scalar, else `g` in t's dtype and shape."""
    if g is None:
        if t.data.size != 1:
            raise RuntimeError(f"a gradient is needed for the non-scalar output {t.shape}")
        return Tensor._wrap(np.ones(t.shape, dtype=t.dtype))
    if not isinstance(g, Tensor):
        g = Tensor._wrap(np.asarray(g, dtype=t.dtype))
    elif g.dtype != t.dtype:
        g = g.astype(t.dtype)
    if g.shape != t.shape:
        g = g.broadcast_to(t.shape)
    return g


def backward(outputs: Sequence[Tensor], grads: Sequence[Any], create_graph: bool = False,
             inputs: Sequence[Tensor] | None = None) -> None:  # fmt: skip
    """Reverse-mode sweep from `outputs` seeded with `grads`, accumulating into leaves' .grad
    (into `inputs`' .grad only, when given)."""
    seeds = [_seed(t, g) for t, g in zip(outputs, grads, strict=True)]
    found = _walk(outputs, seeds, inputs, create_graph, accumulate=inputs is None)
    for t, g in zip(inputs or (), found, strict=False):
        if g is not None:
            _accumulate(t, g, create_graph)


def grad(outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor],
         grad_outputs: Any = None, create_graph: bool = False, allow_unused: bool = False,
         plan: tuple | None = None) -> tuple[Tensor | None, ...]:  # fmt: skip
    """d outputs / d inputs as Tensors, leaving every .grad alone (torch.autograd.grad).

    `grad_outputs` seeds each output (ones for scalars when omitted). With `create_graph=True`
    the result is recorded, so it can be differentiated again. An input the outputs do not
    depend on gets None with `allow_unused=True` and raises otherwise. `plan` (walk_plan of the
    same outputs and inputs) skips searching the graph again when the walk repeats.
    """
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor | np.ndarray):
        grad_outputs = [grad_outputs]
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor) or not t.requires_grad:
            raise RuntimeError(f"input {i} of grad() does not require grad")
    live = [(t, g) for t, g in zip(outputs, grad_outputs, strict=True) if t.requires_grad]
    seeds = [_seed(t, g) for t, g in live]
    found = _walk([t for t, _ in live], seeds, inputs, create_graph, accumulate=False, plan=plan)
    for i, g in enumerate(found):
        if g is None and not allow_unused:
            raise RuntimeError(
                f"input {i} of grad() is not used to compute the outputs (pass allow_unused=True)"
            )
    return tuple(found)


def _accumulate(t: Tensor, g: Tensor, create_graph: bool) -> None:
    """Add a gradient into t.grad: an array, or a differentiable Tensor under create_graph."""
    if create_graph:
        if t.grad is None:
            t.grad = g
        else:
            old = t.grad if isinstance(t.grad, Tensor) else Tensor._wrap(np.asarray(t.grad))
            t.grad = old + g
    elif t.grad is None:
        t.grad = np.array(g.data, dtype=t.dtype, copy=True)
    elif isinstance(t.grad, Tensor):
        t.grad = t.grad.data + g.data
    else:
        t.grad += g.data


def walk_plan(outputs: Sequence[Tensor], inputs: Sequence[Tensor] | None) -> tuple:
    """What a walk from `outputs` visits, in order, and (with `inputs`) the tensors on a path
    to them: computed once and reused by walks that repeat (a Jacobian's rows)."""
    floor = min((t._seq for t in inputs), default=0) if inputs is not None else 0
    order = _topological(outputs, floor)
    if inputs is None:
        return order, None
    targets = {id(t) for t in inputs}
    leads: set[int] = set()
    for t in order:  # post-order: a tensor's inputs come before it
        node = t._node
        if id(t) in targets or (node is not None and any(id(i) in leads for i in node.inputs)):
            leads.add(id(t))
    return [t for t in order if id(t) in leads], leads


def _walk(outputs: Sequence[Tensor], seeds: Sequence[Tensor], inputs: Sequence[Tensor] | None,
          create_graph: bool, accumulate: bool, plan: tuple | None = None
          ) -> list[Tensor | None]:  # fmt: skip
    """The reverse walk. Cotangents are Tensors and each node's rule runs in engine ops, under
    grad mode when `create_graph` (so the walk is recorded) and with any live tangents flowing
    through it (forward-over-reverse). Leaves (and retain_grad tensors) accumulate into .grad
    when `accumulate`; the cotangents reaching `inputs` are returned, and the walk is pruned
    to the part of the graph between the outputs and those inputs (`plan`, from walk_plan)."""
    if not _memory._done:
        _memory.keep_freed_memory()
    order, leads = plan if plan is not None else walk_plan(outputs, inputs)
    targets = {id(t): k for k, t in enumerate(inputs)} if inputs is not None else {}
    found: list[Tensor | None] = [None] * len(inputs or ())
    pending: dict[int, Tensor] = {}
    with _grad_mode(create_graph):
        for t, g in zip(outputs, seeds, strict=True):
            pending[id(t)] = pending[id(t)] + g if id(t) in pending else g
        for t in reversed(order):
            g = pending.pop(id(t), None)
            if g is None:
                continue
            node = t._node
            if targets and id(t) in targets:
                found[targets[id(t)]] = g
            elif accumulate and (node is None or t._retain):
                _accumulate(t, g, create_graph)
            if node is None:
                continue
            for inp, gi in zip(node.inputs, _vjp(node, t, g, create_graph), strict=True):
                if gi is None or not inp.requires_grad or (targets and id(inp) not in leads):
                    continue
                if not isinstance(gi, Tensor):
                    gi = Tensor._wrap(np.asarray(gi))
                if gi.shape != inp.data.shape:
                    raise RuntimeError(
                        f"vjp of {node.op.name!r} gave a gradient of shape {gi.shape} "
                        f"for an input of shape {inp.data.shape}"
                    )
                k = id(inp)
                pending[k] = pending[k] + gi if k in pending else gi
    return found


def _vjp(node: Node, out: Tensor, g: Tensor, create_graph: bool) -> tuple:
    """Run the node's reverse rule with the output Tensor and `higher` set for its duration."""
    op = node.op
    node.output = out
    node.higher = create_graph or bool(_visible and _live_levels([g, *node.inputs]))
    try:
        if node.higher and not op.higher_order:
            raise _first_order_only(op, "differentiate its derivative (create_graph or a tangent)")
        return op.vjp(g, node)
    finally:
        node.output = None


def _topological(outputs: Sequence[Tensor], floor: int = 0) -> list[Tensor]:
    """Post-order of the graph above `outputs`, with an explicit stack (no recursion limit).

    Tensors made before `floor` (the oldest of a walk's inputs) cannot lead to those inputs, so
    the search stops there instead of visiting the whole graph above them.
    """
    order: list[Tensor] = []
    seen: set[int] = set()
    stack = [(t, False) for t in outputs if t.requires_grad and t._seq >= floor]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            for inp in t._node.inputs:
                if inp.requires_grad and inp._seq >= floor and id(inp) not in seen:
                    stack.append((inp, False))
    return order


# --- grad mode ----------------------------------------------------------------------------


@contextlib.contextmanager
def _grad_mode(enabled: bool) -> Iterator[None]:
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = enabled
    try:
        yield
    finally:
        _grad_enabled = previous


class no_grad(contextlib.ContextDecorator):  # noqa: N801 - torch's name
    """Stop recording the tape inside the block (or decorated function)."""

    def __enter__(self):
        global _grad_enabled
        self._previous = _grad_enabled
        _grad_enabled = False
        return self

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._previous
        return False


class enable_grad(no_grad):  # noqa: N801
    """Turn recording back on inside a no_grad block."""

    def __enter__(self):
        global _grad_enabled
        self._previous = _grad_enabled
        _grad_enabled = True
        return self


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def dual_level() -> Iterator[int]:
    """A scope in which tensors may carry tangents (like torch.autograd.forward_ad.dual_level).

    Levels nest (forward over forward): each gets a fresh id, and the tangents of an inner level
    are themselves tensors that may carry tangents of the outer ones. Yields the level's id.
    """
    global _visible
    level = next(_level_ids)
    _levels.append(level)
    previous = _visible
    _visible = len(_levels)
    try:
        yield level
    finally:
        _levels.pop()
        _visible = previous


# --- creation -----------------------------------------------------------------------------


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    """A new Tensor from data (lists, scalars, arrays), float32 for Python floats."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _make(fill, shape, dtype, requires_grad):
    arr = fill(_shape_arg(shape), dtype=np.float32 if dtype is None else dtype)
    return Tensor(arr, requires_grad=requires_grad)


def zeros(*shape, dtype=None, requires_grad=False) -> Tensor:
    return _make(np.zeros, shape, dtype, requires_grad)


def ones(*shape, dtype=None, requires_grad=False) -> Tensor:
    return _make(np.ones, shape, dtype, requires_grad)


def full(shape, fill_value, dtype=None, requires_grad=False) -> Tensor:
    dt = np.float32 if dtype is None else dtype
    return Tensor(np.full(_shape_arg((shape,)), fill_value, dtype=dt), requires_grad)


def zeros_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(np.zeros_like(t.data, dtype=dtype), requires_grad=requires_grad)


def ones_like(t: Tensor, dtype=None, requires_grad=False) -> Tensor:
    return Tensor(np.ones_like(t.data, dtype=dtype), requires_grad=requires_grad)


def randn(*shape, dtype=None, requires_grad=False) -> Tensor:
    from engine.random import generator

    dt = np.dtype(np.float32 if dtype is None else dtype)
    arr = generator().standard_normal(_shape_arg(shape), dtype=dt)
    return Tensor(arr, requires_grad=requires_grad)


def rand(*shape, dtype=None, requires_grad=False) -> Tensor:
    from engine.random import generator

    dt = np.dtype(np.float32 if dtype is None else dtype)
    return Tensor(generator().random(_shape_arg(shape), dtype=dt), requires_grad=requires_grad)


def arange(start, end=None, step=1, dtype=None, requires_grad=False) -> Tensor:
    if end is None:
        start, end = 0, start
    arr = np.arange(start, end, step)
    if dtype is not None:
        arr = arr.astype(dtype)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return Tensor(arr, requires_grad=requires_grad)
