"""Primitive ops: one class per op holding its forward, VJP, JVP and ONNX lowering rule.

Every primitive is registered in `REGISTRY` by name. A primitive class has:

- ``name``: the registry key.
- ``forward(*arrays, **attrs)``: numpy in, numpy out. With ``saves = True`` it returns
  ``(out, saved)`` and ``saved`` is kept on the node for the other rules.
- ``vjp(g, node)``: one cotangent per input (``None`` where an input needs none; check
  ``node.needs[i]`` to skip work). ``node.xs`` are the input arrays, ``node.out`` the output,
  ``node.attrs`` the keyword arguments, ``node.saved`` what forward saved.
- ``jvp(tangents, node)``: the output tangent; ``tangents[i]`` is an array for floating inputs
  (zeros where the input carries none) and ``None`` for integer or boolean inputs.
- ``onnx(ctx, inputs, node)``: the lowering; see engine/README.md for the ``ctx`` contract.

Rules work on plain numpy arrays, so the tape, dual numbers and tracing all share them.
"""

from __future__ import annotations

from typing import Any

RULES = ("forward", "vjp", "jvp", "onnx")


class Primitive:
    """Base of every primitive; subclasses define the four RULES as plain functions."""

    name: str = ""
    saves: bool = False
    differentiable: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for rule in RULES:
            if rule in cls.__dict__ and not isinstance(cls.__dict__[rule], staticmethod):
                setattr(cls, rule, staticmethod(cls.__dict__[rule]))


REGISTRY: dict[str, type[Primitive]] = {}


def register(cls: type[Primitive]) -> type[Primitive]:
    """Add a primitive to REGISTRY, refusing one that lacks a rule or reuses a name."""
    missing = [rule for rule in RULES if rule not in cls.__dict__]
    if missing or not cls.name:
        raise TypeError(f"primitive {cls.__name__} lacks {missing or ['name']}")
    if cls.name in REGISTRY:
        raise TypeError(f"primitive name {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


from engine.ops import elementwise, linalg, nn, reduce, shape  # noqa: E402,F401

__all__ = ["REGISTRY", "Primitive", "register", "elementwise", "linalg", "nn", "reduce", "shape"]
