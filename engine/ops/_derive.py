"""Both modes from each primitive's one derivative rule (the forms in engine/ops/__init__.py).

Everything here runs in engine ops, so what it builds can be recorded on the tape, carry
tangents, and be differentiated again.
"""

from __future__ import annotations

import importlib

import numpy as np

from engine.ops import REGISTRY
from engine.tensor import Node, Tensor, _vjp, apply

_T = importlib.import_module("engine.tensor")  # its grad mode and recorder are set here


def sum_to(g: Tensor, shape: tuple[int, ...]) -> Tensor:
    """g summed over the axes numpy broadcasting stretched, back to `shape` (an operand's)."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    if not stretched:
        return apply(REGISTRY["sum"], [g], axes=tuple(range(lead)), keepdims=False)
    g = apply(REGISTRY["sum"], [g], axes=tuple(range(lead)) + stretched, keepdims=True)
    return apply(REGISTRY["reshape"], [g], shape=shape)


def _add(total, term):
    if term is None:
        return total
    return term if total is None else total + term


def elementwise_vjp(op, g, node) -> tuple:
    """J^T g for a diagonal Jacobian: scale g, then sum it back over broadcast axes."""
    cots = []
    for i, need in enumerate(node.needs):
        v = op.scale(node, i, g) if need else None
        cots.append(None if v is None else sum_to(v, node.xs[i].shape))
    return tuple(cots)


def elementwise_jvp(op, tangents, node):
    """J t for a diagonal Jacobian: the sum of each input's scaled tangent."""
    total = None
    for i, t in enumerate(tangents):
        if t is not None:
            total = _add(total, op.scale(node, i, t))
    return total


def linear_jvp(op, tangents, node):
    """A linear op's tangent is the op itself applied to the tangents (integer and boolean
    operands, such as indices and conditions, stay as they are)."""
    if all(t is None for t in tangents):
        return None
    args = []
    for x, t in zip(node.inputs, tangents, strict=True):
        if x.dtype.kind != "f":
            args.append(x)
        else:
            args.append(t if t is not None else Tensor._wrap(np.zeros_like(x.data)))
    attrs = {**node.attrs, **op.tangent_attrs} if op.tangent_attrs else node.attrs
    return apply(op, args, **attrs)


def _bias_view(node, axis: int) -> tuple[int, ...]:
    """The shape that broadcasts a bias vector along output `axis`."""
    shape = [1] * node.out.ndim
    shape[axis % node.out.ndim] = -1
    return tuple(shape)


def multilinear_jvp(op, tangents, node):
    """Sum over the factors of the op with that factor replaced by its tangent, plus the bias
    tangent broadcast along `bias_axis`."""
    factors = list(node.inputs)
    has_bias = op.bias_axis is not None and len(factors) == op.factors + 1
    if has_bias:
        factors = factors[:-1]
    total = None
    for i, t in enumerate(tangents[: len(factors)]):
        if t is not None:
            total = _add(total, apply(op, [*factors[:i], t, *factors[i + 1 :]], **node.attrs))
    if has_bias and tangents[-1] is not None:
        total = _add(total, tangents[-1].reshape(_bias_view(node, op.bias_axis)))
    return total


def multilinear_vjp(op, g, node) -> tuple:
    """Each factor's cotangent from the op's transpose rule; a bias gets g summed over every
    axis but `bias_axis`."""
    cots = tuple(op.transpose(g, node))
    if op.bias_axis is not None and len(node.inputs) == op.factors + 1:
        bias = None
        if node.needs[-1]:
            axis = op.bias_axis % g.ndim
            axes = tuple(a for a in range(g.ndim) if a != axis)
            bias = g.sum(axis=axes)
        cots = (*cots, bias)
    return cots


def transpose_jvp(op, g, node) -> tuple:
    """J^T g for an op that states only its JVP (a linear map of the tangents written in engine
    ops): run that map on zero tangents with the tape on, then walk it backwards from g. The
    zeros are broadcast views, so no tangent-sized arrays are allocated for them."""
    n = len(node.inputs)
    if op.self_adjoint:
        (i,) = [k for k, x in enumerate(node.inputs) if x.dtype.kind == "f"]
        tangents = [None] * n
        tangents[i] = g
        cots = [None] * n
        cots[i] = op.jvp(tangents, node) if node.needs[i] else None
        return tuple(cots)
    leaves = [
        Tensor._wrap(_zeros(x.shape, x.dtype), True) if need and x.dtype.kind == "f" else None
        for x, need in zip(node.inputs, node.needs, strict=True)
    ]
    if all(leaf is None for leaf in leaves):
        return (None,) * n
    create_graph = _T._grad_enabled
    recorder, _T._recorder, _T._grad_enabled = _T._recorder, [], True  # tape the JVP's ops
    try:
        taped = _T._recorder
        out_t = op.jvp(leaves, node if create_graph else _tape_free(node))
    finally:
        _T._recorder, _T._grad_enabled = recorder, create_graph
    if out_t is None or not out_t.requires_grad:
        return (None,) * n
    # Walk the JVP's graph back from g along the tangents' paths only (the coefficients it
    # multiplies them by are constants of this linear map). Taped outputs are in creation
    # order, which is a topological order.
    on_path = {id(leaf) for leaf in leaves if leaf is not None}
    for t in taped:
        if any(id(x) in on_path for x in t._node.inputs):
            on_path.add(id(t))
    pending = {id(out_t): g}
    for t in reversed(taped):
        gt = pending.pop(id(t), None)
        if gt is None:
            continue
        node_t = t._node
        for x, gx in zip(node_t.inputs, _vjp(node_t, t, gt, create_graph), strict=True):
            if gx is not None and id(x) in on_path:
                k = id(x)
                pending[k] = pending[k] + gx if k in pending else gx
    return tuple(None if leaf is None else pending.get(id(leaf)) for leaf in leaves)


_ZEROS: dict[tuple, np.ndarray] = {}


def _zeros(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A read-only zero array of `shape` taking no memory (a broadcast scalar), cached: the
    tangents a JVP is run on to transpose it."""
    key = (shape, dtype)
    z = _ZEROS.get(key)
    if z is None:
        if len(_ZEROS) > 256:
            _ZEROS.clear()
        z = _ZEROS[key] = np.broadcast_to(np.zeros((), dtype), shape)
    return z


def _untaped(t: Tensor | None) -> Tensor | None:
    """The same values and tangents, off the tape (a constant for reverse mode)."""
    if t is None or not t.requires_grad:
        return t
    free = Tensor._wrap(t.data)
    free._tan = t._tan
    return free


def _tape_free(node: Node) -> Node:
    """A copy of `node` whose input and output Tensors are off the tape, so a JVP run on it
    records only the tangent's own graph."""
    view = Node.__new__(Node)
    view.op, view.xs, view.attrs, view.out, view.saved = (
        node.op, node.xs, node.attrs, node.out, node.saved
    )  # fmt: skip
    view.inputs = [_untaped(t) for t in node.inputs]
    view.output = _untaped(node.output)
    view.needs, view.higher = node.needs, node.higher
    return view
