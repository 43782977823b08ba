"""Sequential (PyTorch and Keras style) and ModuleList."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

from engine.nn.module import Module


class Sequential(Module):
    """Applies its layers in order.

    Built from layers as arguments, from one list, or from an OrderedDict of named layers; grows
    with Keras's `.add(layer)`; `model[i]` and `model[a:b]` index it like a list.
    """

    def __init__(self, *layers: Any) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            for name, layer in layers[0].items():
                self.add_module(name, _check(layer))
            return
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for layer in layers:
            self.add(layer)

    def add(self, layer: Module) -> Sequential:
        """Append a layer (named by its position, like torch's Sequential)."""
        self.add_module(str(len(self._modules)), _check(layer))
        return self

    append = add

    def forward(self, x: Any) -> Any:
        for layer in self._modules.values():
            x = layer(x)
        return x

    def __getitem__(self, index: int | slice) -> Any:
        layers = list(self._modules.values())
        if isinstance(index, slice):
            return Sequential(layers[index])
        return layers[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class ModuleList(Module):
    """A list of submodules, registered so their parameters are found."""

    def __init__(self, modules: Iterable[Module] = ()) -> None:
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> ModuleList:
        self.add_module(str(len(self._modules)), _check(module))
        return self

    def __getitem__(self, index: int) -> Module:
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


def _check(layer: Any) -> Module:
    if not isinstance(layer, Module):
        raise TypeError(f"Sequential takes engine.nn.Module layers, got {type(layer).__name__}")
    return layer
