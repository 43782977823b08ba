"""The engine's one random number generator (numpy Generator), seeded by manual_seed.

Initialisation, dropout and data shuffling draw from `generator()`; call it each time rather
than keeping the object, since manual_seed replaces it.
"""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the engine's generator (like torch.manual_seed) and return it."""
    global _generator
    _generator = np.random.default_rng(int(seed))
    return _generator


def generator() -> np.random.Generator:
    """The current generator."""
    return _generator


def get_state() -> dict:
    """The generator's state (for checkpoints)."""
    return _generator.bit_generator.state


def set_state(state: dict) -> None:
    _generator.bit_generator.state = state
