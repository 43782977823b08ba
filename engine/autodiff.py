"""Function transformations: grad, vjp, jvp (dual numbers), jacobian and gradcheck.

Reverse mode runs the tape (`Tensor.backward`); forward mode attaches a tangent to each input
and lets every primitive's JVP rule push it to the output, so one forward pass gives J @ v.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from engine.tensor import Tensor, backward

_tensor = importlib.import_module("engine.tensor")  # the module; engine.tensor is the function


def _leaf(x: Any, requires_grad: bool = True) -> Tensor:
    """A fresh leaf for a primal; integer and boolean primals stay constants."""
    data = x.data if isinstance(x, Tensor) else np.asarray(x)
    if data.dtype.kind != "f":
        return Tensor(data)
    return Tensor(data.copy(), requires_grad=requires_grad)


def _float_leaf(x: Any) -> Tensor:
    data = x.data if isinstance(x, Tensor) else np.asarray(x)
    return Tensor(data.astype(np.float64) if data.dtype.kind != "f" else data.copy())


def _out(y: Any) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"the function must return a Tensor, got {type(y).__name__}")
    return y


# --- forward mode -------------------------------------------------------------------------


@contextlib.contextmanager
def dual_level() -> Iterator[None]:
    """Scope in which tensors may carry tangents (like torch.autograd.forward_ad.dual_level)."""
    _tensor._dual_depth += 1
    try:
        yield
    finally:
        _tensor._dual_depth -= 1


def make_dual(primal: Any, tangent: Any) -> Tensor:
    """A tensor carrying (primal, tangent); use inside dual_level()."""
    t = _leaf(primal, requires_grad=False)
    if t.dtype.kind != "f":
        raise TypeError(f"only floating tensors can carry a tangent, not {t.dtype}")
    tan = np.asarray(getattr(tangent, "data", tangent), dtype=t.dtype)
    if tan.shape != t.shape:
        raise ValueError(f"tangent shape {tan.shape} does not match primal shape {t.shape}")
    t.tangent = tan.copy()
    return t


def unpack_dual(t: Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    return t.data, t.tangent


def jvp(f: Callable[..., Tensor], primals: Sequence[Any], tangents: Sequence[Any]
        ) -> tuple[Tensor, np.ndarray]:  # fmt: skip
    """(f(*primals), J_f(primals) @ tangents) from one forward pass with dual numbers."""
    if len(primals) != len(tangents):
        raise ValueError(f"{len(primals)} primals but {len(tangents)} tangents")
    with dual_level():
        duals = [
            make_dual(p, t) if np.asarray(getattr(p, "data", p)).dtype.kind == "f" else _leaf(p)
            for p, t in zip(primals, tangents, strict=True)
        ]
        out = _out(f(*duals))
        tangent = out.tangent if out.tangent is not None else np.zeros_like(out.data)
    out.tangent = None
    return out.detach(), tangent


# --- reverse mode -------------------------------------------------------------------------


def vjp(f: Callable[..., Tensor], *primals: Any) -> tuple[Tensor, Callable]:
    """(f(*primals), vjp_fn): vjp_fn(cotangent) gives one gradient per primal (None for
    integer primals, which are held constant)."""
    leaves = [_leaf(p) for p in primals]
    out = _out(f(*leaves))

    def vjp_fn(cotangent: Any) -> tuple[np.ndarray | None, ...]:
        for leaf in leaves:
            leaf.grad = None
        if out.requires_grad:
            g = np.asarray(getattr(cotangent, "data", cotangent), dtype=out.dtype)
            backward([out], [np.broadcast_to(g, out.shape)])
        return tuple(
            None if leaf.dtype.kind != "f" else leaf.grad if leaf.grad is not None
            else np.zeros_like(leaf.data)
            for leaf in leaves
        )  # fmt: skip

    return out.detach(), vjp_fn


def grad(f: Callable[..., Tensor], argnums: int | Sequence[int] = 0) -> Callable:
    """A function returning d f / d args[argnums] for scalar-valued f (like jax.grad)."""

    def grad_f(*args: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        out, fn = vjp(f, *args)
        if out.data.size != 1:
            raise ValueError(f"grad needs a scalar output, got shape {out.shape}")
        grads = fn(np.ones(out.shape, dtype=out.dtype))
        if isinstance(argnums, int):
            return grads[argnums]
        return tuple(grads[i] for i in argnums)

    return grad_f


def jacobian(f: Callable[[Tensor], Tensor], x: Any, mode: str = "auto") -> np.ndarray:
    """The Jacobian of f at x, shaped out.shape + x.shape.

    mode="forward" takes one JVP per input element, "reverse" one VJP per output element;
    "auto" picks forward when x has fewer elements than f(x), reverse otherwise.
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', not {mode!r}")
    x0 = _float_leaf(x)
    if mode == "auto":
        with _tensor.no_grad():
            n_out = _out(f(x0)).data.size
        mode = "forward" if x0.data.size < n_out else "reverse"
    if mode == "forward":
        columns = []
        for i in range(x0.data.size):
            e = np.zeros(x0.data.size, dtype=x0.dtype)
            e[i] = 1
            out, t = jvp(f, [x0], [e.reshape(x0.shape)])
            columns.append(t.reshape(-1))
        return np.stack(columns, axis=-1).reshape(out.shape + x0.shape)
    out, fn = vjp(f, x0)
    rows = []
    for j in range(out.data.size):
        e = np.zeros(out.data.size, dtype=out.dtype)
        e[j] = 1
        rows.append(fn(e.reshape(out.shape))[0].reshape(-1))
    return np.stack(rows, axis=0).reshape(out.shape + x0.shape)


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


__all__ = ["dual_level", "make_dual", "unpack_dual", "jvp", "vjp", "grad", "jacobian",
           "gradcheck", "numerical_jacobian"]  # fmt: skip
