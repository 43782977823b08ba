"""`Optimizer`: parameter groups, per-parameter state, and state_dict for resuming training.

Like torch, an optimizer holds `param_groups` (dicts with a "params" list and hyperparameters,
so schedulers can change "lr") and `state` (per-parameter dicts of arrays and step counts).
`state_dict()` refers to parameters by their position across groups, so it loads into a fresh
optimizer built over the same model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from engine.tensor import Tensor


class Optimizer:
    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[int, dict[str, Any]] = {}  # keyed by id(param)
        self.param_groups: list[dict[str, Any]] = []
        self._scratch: dict[tuple[tuple[int, ...], np.dtype, int], np.ndarray] = {}
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(
                    f"optimizer can only optimise engine Tensors, got {type(p).__name__}"
                )
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("a parameter appears in more than one parameter group")
        full = {**self.defaults, **group, "params": params}
        self.param_groups.append(full)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none or p.grad is None:
                    p.grad = None
                else:
                    p.grad = np.zeros_like(p.data)

    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = np.asarray(p.grad)
                if grad.dtype != p.data.dtype:
                    grad = grad.astype(p.data.dtype)
                state = self.state.setdefault(id(p), {})
                self._update(p, grad, state, group)

    def _update(self, p: Tensor, grad: np.ndarray, state: dict[str, Any], group: dict) -> None:
        raise NotImplementedError

    def _buffer(self, like: np.ndarray, slot: int = 0) -> np.ndarray:
        """A reusable work array shaped like `like`: updates write into it instead of making
        fresh temporaries, which for large weights cost a page fault per page every step."""
        key = (like.shape, like.dtype, slot)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.empty_like(like)
        return buf

    # ----- state ---------------------------------------------------------------------------
    def _ordered_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        """{"state": {index: {name: array or number}}, "param_groups": [hyperparameters]}."""
        index = {id(p): i for i, p in enumerate(self._ordered_params())}
        state = {
            index[pid]: {k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in s.items()}
            for pid, s in self.state.items()
            if pid in index
        }
        groups, start = [], 0
        for g in self.param_groups:
            n = len(g["params"])
            groups.append(
                {
                    **{k: v for k, v in g.items() if k != "params"},
                    "params": list(range(start, start + n)),
                }
            )
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
            len(a["params"]) != len(b["params"])
            for a, b in zip(groups, self.param_groups, strict=True)
        ):
            raise ValueError(
                "optimizer state_dict does not match this optimizer's parameter groups "
                f"(saved sizes {[len(g['params']) for g in groups]}, "
                f"here {[len(g['params']) for g in self.param_groups]})"
            )
        params = self._ordered_params()
        for saved, group in zip(groups, self.param_groups, strict=True):
            group.update({k: _plain(v) for k, v in saved.items() if k != "params"})
        self.state = {}
        for key, s in state_dict["state"].items():
            p = params[int(key)]
            restored = {}
            for k, v in s.items():
                if isinstance(v, np.ndarray):
                    if v.shape != p.data.shape:
                        raise ValueError(
                            f"optimizer state {k!r} of parameter {key} has shape {v.shape}, "
                            f"the parameter has {p.data.shape}"
                        )
                    restored[k] = v.astype(p.data.dtype, copy=True)
                else:
                    restored[k] = _plain(v)
            self.state[id(p)] = restored

    def __repr__(self) -> str:
        hyper = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return f"{type(self).__name__}({hyper})"


def _plain(v: Any) -> Any:
    """numpy scalars and lists from a saved file back to Python values."""
    if isinstance(v, np.ndarray) and v.ndim == 0:
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list):
        return tuple(v)
    return v
