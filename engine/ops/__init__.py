"""Primitive ops: one class per op holding its forward, its derivative and its ONNX lowering.

Every primitive is registered in `REGISTRY` by name and has:

- ``name``: the registry key.
- ``forward(*arrays, **attrs)``: numpy in, numpy out. With ``saves = True`` it returns
  ``(out, saved)`` and ``saved`` is kept on the node.
- ``onnx(ctx, inputs, node)``: the lowering; see engine/README.md for the ``ctx`` contract.
- its derivative, stated once, in the form that fits the op (the base class derives both the
  JVP (forward mode) and the VJP (reverse mode) from it):

  ===============  ==========================  =============================================
  base class       the one rule                what follows
  ===============  ==========================  =============================================
  `Elementwise`    ``scale(node, i, v)``:      the Jacobian is diagonal, so J v and J^T v are
                   d out / d x_i times v       the same product (summed back over broadcast
                                               axes in reverse mode)
  `Linear`         ``transpose(g, node)``:     JVP = the op applied to the tangents
                   the adjoint, per input
  `Multilinear`    ``transpose(g, node)``:     JVP = sum over inputs of the op with that
                   each input's adjoint with   input replaced by its tangent (`bias_axis`
                   the others held fixed       adds an additive bias input's term)
  `Primitive`      ``jvp(tangents, node)``:    VJP = the transpose of that linear map, found
                   the tangent of the output   by running it backwards (`self_adjoint` ops
                                               just reuse it; a hot op may state `transpose`,
                                               tested to be the JVP's adjoint)
  ===============  ==========================  =============================================

Rules are written in engine ops on Tensors (``node.inputs``, ``node.output``, cotangents and
tangents are Tensors), so a derivative can itself be recorded, pushed forward or differentiated
again: every order in both modes follows from the one rule. ``node.attrs`` are the keyword
arguments, ``node.xs``/``node.out`` the plain arrays (for piecewise-constant facts such as masks),
``node.saved`` what forward saved, ``node.needs[i]`` whether input i wants a gradient and
``node.higher`` whether the rule's result will itself be differentiated (a rule may then not
use ``node.saved`` values as constants). A primitive with ``higher_order = False`` has a
derivative that cannot be differentiated again; asking for that raises an error naming it.
"""

from __future__ import annotations

from typing import Any

RULES = ("forward", "onnx")
DERIVATIVE_RULES = ("scale", "transpose", "jvp")
_RULE_FUNCS = RULES + DERIVATIVE_RULES + ("vjp",)


class Primitive:
    """Base of every primitive; an op that subclasses it directly states its `jvp` in engine
    ops, and reverse mode transposes that linear map."""

    name: str = ""
    saves: bool = False
    differentiable: bool = True
    higher_order: bool = True  # False: the derivative rule is first-order only
    self_adjoint: bool = False  # one floating input and a symmetric Jacobian: VJP = JVP
    derivative_only: bool = False  # made only inside derivatives, with attributes that depend
    # on the values being differentiated (so no ONNX lowering: its `onnx` rule says so)
    derivative = "jvp"  # which rule states the derivative (set by the form base classes)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for rule in _RULE_FUNCS:
            value = cls.__dict__.get(rule)
            if value is not None and not isinstance(value, staticmethod | classmethod):
                setattr(cls, rule, staticmethod(value))

    # A `jvp` primitive may also state the transpose of that JVP when running the JVP
    # backwards is measurably slower (log_softmax: every classifier's backward pass);
    # tests/engine/test_higher_order.py checks each such pair is adjoint, so they cannot drift.
    transpose = None

    @classmethod
    def vjp(cls, g, node) -> tuple:
        """Cotangents of the inputs (Tensors or None) from the output's cotangent `g`."""
        if cls.transpose is not None:
            return cls.transpose(g, node)
        return _derive.transpose_jvp(cls, g, node)

    # jvp(tangents, node) -> the output's tangent (a Tensor, or None when it is zero), from
    # one tangent per input (a Tensor, or None where the input carries none): the rule itself
    # here, derived from the form's rule in the subclasses below.


class Elementwise(Primitive):
    """An element-wise op (with numpy broadcasting): `scale(node, i, v)` = d out/d x_i * v."""

    derivative = "scale"

    @classmethod
    def vjp(cls, g, node) -> tuple:
        return _derive.elementwise_vjp(cls, g, node)

    @classmethod
    def jvp(cls, tangents, node):
        return _derive.elementwise_jvp(cls, tangents, node)


class Linear(Primitive):
    """An op linear in its floating inputs: `transpose(g, node)` gives one cotangent per input.

    `tangent_attrs` overrides attributes when the op is applied to tangents (an affine op such
    as pad with a fill value has the op with a zero fill as its linear part).
    """

    derivative = "transpose"
    tangent_attrs: dict[str, Any] = {}

    @classmethod
    def vjp(cls, g, node) -> tuple:
        return cls.transpose(g, node)

    @classmethod
    def jvp(cls, tangents, node):
        return _derive.linear_jvp(cls, tangents, node)


class Multilinear(Primitive):
    """An op linear in each floating input separately (mul-like: matmul, conv2d).

    `transpose(g, node)` gives each input's cotangent with the others held at their values.
    With `bias_axis` set, the last input is a bias vector added along that output axis; its
    tangent and cotangent are derived here, and the op must accept being called without it.
    """

    derivative = "transpose"
    factors = 2
    bias_axis: int | None = None

    @classmethod
    def vjp(cls, g, node) -> tuple:
        return _derive.multilinear_vjp(cls, g, node)

    @classmethod
    def jvp(cls, tangents, node):
        return _derive.multilinear_jvp(cls, tangents, node)


REGISTRY: dict[str, type[Primitive]] = {}


def register(cls: type[Primitive]) -> type[Primitive]:
    """Add a primitive to REGISTRY, refusing one that lacks a rule or reuses a name."""
    missing = [rule for rule in RULES if not callable(getattr(cls, rule, None))]
    if not cls.name:
        missing.append("name")
    if cls.differentiable and not _defines(cls, cls.derivative):
        missing.append(cls.derivative)
    if missing:
        raise TypeError(f"primitive {cls.__name__} lacks {missing}")
    if cls.name in REGISTRY:
        raise TypeError(f"primitive name {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def _defines(cls: type, rule: str) -> bool:
    """Whether `rule` is defined by the primitive itself or a base below the form classes."""
    for klass in cls.__mro__:
        if klass in (Primitive, Elementwise, Linear, Multilinear):
            return False
        if rule in klass.__dict__:
            return True
    return False


from engine.ops import _derive, elementwise, linalg, nn, reduce, shape  # noqa: E402,F401

__all__ = [
    "REGISTRY", "Primitive", "Elementwise", "Linear", "Multilinear", "register", "RULES",
    "DERIVATIVE_RULES", "elementwise", "linalg", "nn", "reduce", "shape",
]  # fmt: skip
