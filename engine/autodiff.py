"""Function transformations: grad, vjp, jvp, jacobian, hessian, hvp and gradcheck.

Reverse mode runs the tape; forward mode attaches a tangent to each input and lets every
primitive's JVP push it to the output. Because every derivative rule is written in engine ops,
the transformations compose like JAX's: `grad(grad(f))`, `jvp` of a function that calls
`grad` (forward-over-reverse), `jacobian(grad(f))`, and so on to any order. Results are Tensors
(numpy-compatible: `np.asarray(result)`), connected to whatever an outer transformation tracks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine.tensor import Tensor, backward, dual_level

_tensor = importlib.import_module("engine.tensor")  # the module; engine.tensor is the function


def _data(x: Any) -> np.ndarray:
    return x.data if isinstance(x, Tensor) else np.asarray(x)


def _is_float(x: Any) -> bool:
    return _data(x).dtype.kind == "f"


def _tracked(x: Any) -> bool:
    """Whether an outer transformation follows x (on the tape, or carrying tangents)."""
    return isinstance(x, Tensor) and (x.requires_grad or bool(x._tan))


def _variable(x: Any) -> Tensor:
    """A fresh tensor to differentiate with respect to, still connected to x's own derivatives:
    an identity of x on the tape when x is on it (so an outer grad sees through), else a new
    leaf that keeps x's tangents. Integer and boolean values stay constants."""
    if not _is_float(x):
        return x if isinstance(x, Tensor) else Tensor(_data(x))
    if isinstance(x, Tensor) and x.requires_grad:
        with _tensor.enable_grad():
            return x.reshape(x.shape)
    leaf = Tensor(_data(x), requires_grad=True)
    if isinstance(x, Tensor) and x._tan:
        leaf._tan = dict(x._tan)
    return leaf


def _out(y: Any) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"the function must return a Tensor, got {type(y).__name__}")
    return y


def _needs_graph(out: Tensor, variables: Sequence[Tensor], args: Sequence[Any]) -> bool:
    """Whether the derivative must be recorded because something outside may differentiate it:
    an argument that is itself tracked, or a tracked tensor the function closed over."""
    if not _tensor.is_grad_enabled():
        return False
    if any(_tracked(a) and a.requires_grad for a in args):
        return True
    own = {id(v) for v in variables}
    stack, seen = [out], set()
    while stack:
        t = stack.pop()
        if id(t) in seen or id(t) in own or not t.requires_grad:
            continue
        seen.add(id(t))
        if t._node is None:
            return True  # a leaf that is not one of ours: a parameter, an outer variable
        stack.extend(t._node.inputs)
    return False


# --- forward mode -------------------------------------------------------------------------


def make_dual(primal: Any, tangent: Any) -> Tensor:
    """A tensor carrying (primal, tangent) at the innermost live dual level (use inside
    dual_level()); a tracked primal stays connected to what tracks it."""
    if not _is_float(primal):
        raise TypeError(f"only floating tensors can carry a tangent, not {_data(primal).dtype}")
    if not _tensor._levels:
        raise RuntimeError("make_dual needs a live dual level: use `with dual_level():`")
    level = _tensor._levels[-1]
    if isinstance(primal, Tensor) and primal.requires_grad:
        with _tensor.enable_grad():
            t = primal.reshape(primal.shape)
    else:
        t = Tensor(_data(primal))
        if isinstance(primal, Tensor) and primal._tan:
            t._tan = dict(primal._tan)
    if isinstance(tangent, Tensor):
        tan = tangent if tangent.dtype == t.dtype else tangent.astype(t.dtype)
    else:
        tan = Tensor(np.asarray(tangent, dtype=t.dtype))
    if tan.shape != t.shape:
        raise ValueError(f"tangent shape {tan.shape} does not match primal shape {t.shape}")
    t._tan = {**(t._tan or {}), level: tan}
    return t


def unpack_dual(t: Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """(primal, tangent) as arrays; the tangent of the innermost level that set one."""
    return t.data, t.tangent


def _take_tangent(out: Tensor, level: int) -> Tensor:
    tan = out._tan.pop(level, None) if out._tan else None
    if out._tan is not None and not out._tan:
        out._tan = None
    return tan if tan is not None else Tensor._wrap(np.zeros_like(out.data))


def jvp(f: Callable[..., Tensor], primals: Sequence[Any], tangents: Sequence[Any]
        ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(f(*primals), J_f(primals) @ tangents) from one forward pass with dual numbers.

    Integer primals are held constant (their tangents are ignored). Nests with itself and with
    grad/vjp in any order: jvp(grad(f), (x,), (v,)) is a Hessian-vector product.
    """
    if len(primals) != len(tangents):
        raise ValueError(f"{len(primals)} primals but {len(tangents)} tangents")
    with dual_level() as level:
        duals = [
            make_dual(p, t) if _is_float(p) else (p if isinstance(p, Tensor) else Tensor(p))
            for p, t in zip(primals, tangents, strict=True)
        ]
        out = _out(f(*duals))
    return out, _take_tangent(out, level)


# --- reverse mode -------------------------------------------------------------------------


def vjp(f: Callable[..., Tensor], *primals: Any) -> tuple[Tensor, Callable]:
    """(f(*primals), vjp_fn): vjp_fn(cotangent) gives one gradient per primal (None for
    integer primals, which are held constant). vjp_fn may be called any number of times."""
    variables = [_variable(p) for p in primals]
    with _tensor.enable_grad():
        out = _out(f(*variables))
    wrt = [v for v in variables if v.dtype.kind == "f"]
    create_graph = _needs_graph(out, wrt, primals)
    plan: list = []  # the walk's order, found on the first call and reused by the next ones

    def vjp_fn(cotangent: Any) -> tuple[Tensor | None, ...]:
        if out.requires_grad and wrt:
            if not plan:
                plan.append(_tensor.walk_plan([out], wrt))
            found = iter(_tensor.grad(out, wrt, cotangent, create_graph=create_graph,
                                      allow_unused=True, plan=plan[0]))  # fmt: skip
        else:
            found = iter([None] * len(wrt))
        grads = []
        for v in variables:
            if v.dtype.kind != "f":
                grads.append(None)
                continue
            g = next(found)
            grads.append(g if g is not None else Tensor._wrap(np.zeros_like(v.data)))
        return tuple(grads)

    return out, vjp_fn


def grad(f: Callable[..., Tensor], argnums: int | Sequence[int] = 0) -> Callable:
    """A function returning d f / d args[argnums] for scalar-valued f (like jax.grad).

    The gradient is a Tensor; under another transformation it is differentiable (grad(grad(f)),
    jvp(grad(f), ...), jacobian(grad(f), x)).
    """

    def grad_f(*args: Any) -> Tensor | tuple[Tensor, ...]:
        out, fn = vjp(f, *args)
        if out.data.size != 1:
            raise ValueError(f"grad needs a scalar output, got shape {out.shape}")
        grads = fn(np.ones(out.shape, dtype=out.dtype))
        if isinstance(argnums, int):
            return grads[argnums]
        return tuple(grads[i] for i in argnums)

    return grad_f


def hvp(f: Callable[[Tensor], Tensor], x: Any, v: Any) -> Tensor:
    """The Hessian of scalar f at x times v, forward-over-reverse: one gradient pass with dual
    numbers (a few gradients' cost), never forming the Hessian."""
    return jvp(grad(f), (x,), (v,))[1]


# --- Jacobians and Hessians ---------------------------------------------------------------


def _basis(size: int, k: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    e = np.zeros(size, dtype=dtype)
    e[k] = 1
    return e.reshape(shape)


def _stack(rows: list[Tensor], shape: tuple[int, ...]) -> Tensor:
    from engine.functional import stack

    return stack([r.reshape(-1) for r in rows], 0).reshape(shape)


def jacobian(f: Callable[[Tensor], Tensor], x: Any, mode: str = "auto") -> Tensor:
    """The Jacobian of f at x, shaped out.shape + x.shape (a Tensor).

    mode="forward" takes one JVP per input element, "reverse" one VJP per output element;
    "auto" picks forward when x has fewer elements than f(x), reverse otherwise. f may itself
    differentiate (jacobian(grad(f), x) is the Hessian).
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', not {mode!r}")
    x0 = x if isinstance(x, Tensor) and _is_float(x) else Tensor(_float(x))
    if mode == "auto":
        with _tensor.no_grad():
            n_out = _out(f(Tensor(x0.data))).data.size
        mode = "forward" if x0.data.size < n_out else "reverse"
    if mode == "forward":
        columns, out = [], None
        for k in range(x0.data.size):
            out, t = jvp(f, [x0], [_basis(x0.data.size, k, x0.shape, x0.dtype)])
            columns.append(t)
        if out is None:
            out = _out(f(x0))
        cols = _stack(columns, (x0.data.size, out.data.size)) if columns else None
        if cols is None:
            return Tensor(np.zeros(out.shape + x0.shape, dtype=out.dtype))
        return cols.T.reshape(out.shape + x0.shape)
    out, fn = vjp(f, x0)
    rows = [fn(_basis(out.data.size, j, out.shape, out.dtype))[0] for j in range(out.data.size)]
    if not rows:
        return Tensor(np.zeros(out.shape + x0.shape, dtype=out.dtype))
    return _stack(rows, out.shape + x0.shape)


def _float(x: Any) -> np.ndarray:
    data = _data(x)
    return data.astype(np.float64) if data.dtype.kind != "f" else data


HESSIAN_MODES = ("auto", "forward-over-reverse", "reverse-over-reverse")


def auto_hessian_mode(out_size: int) -> str:
    """hessian's "auto" choice for an f with `out_size` outputs (see hessian)."""
    return "reverse-over-reverse" if out_size == 1 else "forward-over-reverse"


def hessian(f: Callable[[Tensor], Tensor], mode: str = "auto") -> Callable[[Any], Tensor]:
    """x -> the Hessian of f at x, shaped out.shape + x.shape + x.shape.

    Both modes first take f's derivative in reverse (the gradient, or for a vector-valued f
    its Jacobian row by row), then differentiate that again:

    - "forward-over-reverse": one JVP of the derivative per input element (Hessian-vector
      products): f and its reverse pass run again with dual numbers for every column; no
      second tape is kept.
    - "reverse-over-reverse": the derivative's own graph is recorded once, then walked back
      once per element of the derivative (out.size * x.size walks).
    - "auto" picks by shape. A scalar f (out.size == 1) gets reverse-over-reverse: its one
      gradient graph is recorded once and each of the n rows is one walk back, where forward
      mode re-runs f for each of the n columns (about 2x slower for the 1,033-parameter MLP in
      benchmarks/engine_vs_torch.py). A vector f gets forward-over-reverse: a walk back from one
      element of the stacked Jacobian also walks every other output's graph (with zero
      cotangents), so reverse-over-reverse costs out.size times more walks (5x slower for
      R^50 -> R^10); forward mode's n columns each cover all outputs at once.
    """
    if mode not in HESSIAN_MODES:
        raise ValueError(f"mode must be one of {HESSIAN_MODES}, not {mode!r}")

    def first(x: Tensor) -> Tensor:
        return jacobian(f, x, mode="reverse")

    def hessian_at(x: Any) -> Tensor:
        x0 = x if isinstance(x, Tensor) and _is_float(x) else Tensor(_float(x))
        chosen = mode
        if chosen == "auto":
            with _tensor.no_grad():
                chosen = auto_hessian_mode(_out(f(Tensor(x0.data))).data.size)
        outer = "forward" if chosen == "forward-over-reverse" else "reverse"
        return jacobian(first, x0, mode=outer)

    return hessian_at


# --- checking -----------------------------------------------------------------------------


def numerical_jacobian(f: Callable[..., Tensor], inputs: Sequence[np.ndarray], wrt: int,
                       eps: float = 1e-6) -> np.ndarray:  # fmt: skip
    """Central differences of f with respect to inputs[wrt], shaped (out.size, in.size)."""
    xs = [np.array(a, dtype=np.float64) if a.dtype.kind == "f" else a for a in inputs]
    x = xs[wrt]
    flat = x.reshape(-1)
    cols = []
    with _tensor.no_grad():
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            plus = np.array(_out(f(*[Tensor(a) for a in xs])).data, dtype=np.float64)
            flat[i] = old - eps
            minus = np.array(_out(f(*[Tensor(a) for a in xs])).data, dtype=np.float64)
            flat[i] = old
            cols.append(((plus - minus) / (2 * eps)).reshape(-1))
    return np.stack(cols, axis=1) if cols else np.zeros((0, 0))


def gradcheck(
    f: Callable[..., Tensor],
    inputs: Sequence[Any],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    check_forward: bool = True,
) -> bool:
    """Compare reverse-mode (and forward-mode) Jacobians with central differences in float64.

    Integer inputs are held fixed. Raises AssertionError naming the input and the worst entry;
    returns True when every Jacobian matches (torch.autograd.gradcheck's defaults).
    """
    arrays = [np.asarray(getattr(a, "data", a)) for a in inputs]
    arrays = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in arrays]
    float_idx = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    leaves = [Tensor(a.copy(), requires_grad=i in float_idx) for i, a in enumerate(arrays)]
    out = _out(f(*leaves))
    n_out = out.data.size
    reverse = {i: np.zeros((n_out, arrays[i].size)) for i in float_idx}
    if out.requires_grad:
        for j in range(n_out):
            for leaf in leaves:
                leaf.grad = None
            e = np.zeros(n_out, dtype=out.dtype)
            e[j] = 1
            backward([out], [e.reshape(out.shape)])
            for i in float_idx:
                if leaves[i].grad is not None:
                    reverse[i][j] = leaves[i].grad.reshape(-1)
    for i in float_idx:
        numeric = numerical_jacobian(f, arrays, i, eps)
        _compare(f"input {i} (reverse mode)", reverse[i], numeric, atol, rtol)
        if check_forward:
            forward = np.zeros_like(numeric)
            for k in range(arrays[i].size):
                tangents = [np.zeros_like(a) for a in arrays if a.dtype.kind == "f"]
                pos = float_idx.index(i)
                tangents[pos].reshape(-1)[k] = 1
                forward[:, k] = _jvp_all(f, arrays, float_idx, tangents).reshape(-1)
            _compare(f"input {i} (forward mode)", forward, numeric, atol, rtol)
    return True


def _jvp_all(f, arrays, float_idx, tangents):
    with dual_level():
        args = []
        for i, a in enumerate(arrays):
            if i in float_idx:
                args.append(make_dual(a, tangents[float_idx.index(i)]))
            else:
                args.append(Tensor(a))
        with _tensor.no_grad():
            out = _out(f(*args))
        return out.tangent if out.tangent is not None else np.zeros_like(out.data)


def _compare(what: str, analytic: np.ndarray, numeric: np.ndarray, atol: float, rtol: float):
    if analytic.shape != numeric.shape:
        raise AssertionError(f"{what}: Jacobian shape {analytic.shape} vs {numeric.shape}")
    bad = ~np.isclose(analytic, numeric, atol=atol, rtol=rtol)
    if bad.any():
        j, k = np.argwhere(bad)[0]
        raise AssertionError(
            f"gradcheck failed for {what}: d out[{j}] / d in[{k}] analytic {analytic[j, k]:.8g}"
            f" vs numerical {numeric[j, k]:.8g} ({int(bad.sum())} of {bad.size} entries differ)"
        )


__all__ = ["dual_level", "make_dual", "unpack_dual", "jvp", "vjp", "grad", "hvp", "jacobian",
           "hessian", "auto_hessian_mode", "gradcheck", "numerical_jacobian"]  # fmt: skip
