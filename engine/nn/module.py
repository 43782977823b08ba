"""`Module`: the base of every layer, with PyTorch's registration and state conventions.

Assigning a `Parameter` or a `Module` to an attribute registers it; `register_buffer` registers
non-trainable state (e.g. BatchNorm running statistics) that is saved and exported but not
optimised. Buffers stay `Tensor`s so the exporter can turn them into initializers.

Every module remembers the arguments it was constructed with (`init_args`), so a checkpoint can
rebuild it by import path without pickle.
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from engine import tracing
from engine.tensor import Parameter, Tensor

_naming = threading.local()  # id(module) -> attribute name, while a trace runs a model


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class for layers and models; subclasses define `forward`."""

    training: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> Module:
        module = super().__new__(cls)
        object.__setattr__(module, "_init_call", (args, kwargs))
        return module

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ----- construction record -------------------------------------------------------------
    @property
    def init_args(self) -> dict[str, Any]:
        """The constructor arguments by name (defaults filled in), for rebuilding the module."""
        args, kwargs = self._init_call
        bound = inspect.signature(type(self).__init__).bind(self, *args, **kwargs)
        bound.apply_defaults()
        out = dict(bound.arguments)
        out.pop(next(iter(out)))  # self
        return out

    # ----- registration --------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__() (call super().__init__() first)"
            )
        for table in (self._parameters, self._buffers, self._modules):
            if name in table and not (table is self._buffers and _is_tensor_or_none(value)):
                del table[name]
        if isinstance(value, Parameter):
            self.__dict__.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self.__dict__.pop(name, None)
            self._modules[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails.
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                self._non_persistent.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register `param` under `name` (None records an absent parameter, e.g. bias=False)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"{name!r}: expected an engine.Parameter, got {type(param).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register non-trainable state saved in `state_dict` (unless `persistent=False`)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(np.asarray(tensor))
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{name!r}: expected an engine.nn.Module, got {type(module).__name__}")
        self.__dict__.pop(name, None)
        self._modules[name] = module

    # ----- traversal -----------------------------------------------------------------------
    def named_modules(self, prefix: str = "", memo: set[int] | None = None):
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, child in self._modules.items():
            if child is not None:
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, child in self.named_children():
            yield child

    def _named_members(self, table: str, prefix: str, recurse: bool):
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            for name, value in getattr(mod, table).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), value, mod, name

    def named_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        for full, value, _, _ in self._named_members("_parameters", prefix, recurse):
            yield full, value

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Tensor]]:
        for full, value, _, _ in self._named_members("_buffers", prefix, recurse):
            yield full, value

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ----- state ---------------------------------------------------------------------------
    def _state_tensors(self) -> OrderedDict[str, Tensor]:
        """Parameters and persistent buffers by qualified name (the `state_dict` keys)."""
        out: OrderedDict[str, Tensor] = OrderedDict()
        for prefix, mod in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    out[dot + name] = p
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    out[dot + name] = b
        return out

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of every parameter and persistent buffer as numpy arrays, by qualified name."""
        return OrderedDict(
            (k, np.array(t.data, copy=True)) for k, t in self._state_tensors().items()
        )

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True
    ) -> IncompatibleKeys:
        """Copy values (numpy arrays, engine or torch tensors) into the parameters and buffers.

        Values keep each tensor's dtype. With `strict`, missing or unexpected keys are an error;
        a shape mismatch is always one.
        """
        own = self._state_tensors()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(
                f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        staged = {}
        for key, tensor in own.items():
            if key not in state_dict:
                continue
            value = _to_numpy(state_dict[key])
            if value.shape != tensor.data.shape:
                raise ValueError(
                    f"load_state_dict: {key!r} has shape {tuple(value.shape)} in the state dict "
                    f"but {tuple(tensor.data.shape)} in the model"
                )
            staged[key] = value.astype(tensor.data.dtype, copy=True)
        for key, value in staged.items():
            own[key].data = value
        return IncompatibleKeys(missing, unexpected)

    # ----- modes, dtype, grads -------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = np.zeros_like(p.data)

    def to(self, dtype: Any) -> Module:
        """Cast floating-point parameters and buffers to `dtype` in place (e.g. np.float64)."""
        dtype = np.dtype(dtype)
        for t in list(self.parameters()) + list(self.buffers()):
            if np.issubdtype(t.data.dtype, np.floating):
                t.data = t.data.astype(dtype)
                if t.grad is not None:
                    t.grad = None
        return self

    def double(self) -> Module:
        return self.to(np.float64)

    def float(self) -> Module:
        return self.to(np.float32)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    # ----- calling -------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # The scope only matters to a trace: the exporter names each op by its module path.
        if not tracing.active():
            return self.forward(*args, **kwargs)
        names = getattr(_naming, "names", None)
        if names is not None:  # inside the traced root: enter this module's attribute name
            with tracing.scope(names.get(id(self), type(self).__name__)):
                return self.forward(*args, **kwargs)
        # The outermost module of a trace: name every submodule by its place under this one
        # (scopes nest with dots, so each enters only the last part of its qualified name).
        _naming.names = {id(m): q.rpartition(".")[2] for q, m in self.named_modules()}
        try:
            return self.forward(*args, **kwargs)
        finally:
            _naming.names = None

    # ----- display -------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"

    def __dir__(self) -> list[str]:
        return sorted(
            set(super().__dir__()) | set(self._parameters) | set(self._buffers) | set(self._modules)
        )


def _is_tensor_or_none(value: Any) -> bool:
    return value is None or isinstance(value, Tensor)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return np.asarray(value.data)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)
