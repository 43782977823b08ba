"""Datasets bundled with the engine (no network at run time)."""

from engine.datasets.digits import CLASS_LABELS, INPUT_SCALING, Digits, description, load_digits

__all__ = ["CLASS_LABELS", "INPUT_SCALING", "Digits", "description", "load_digits"]
