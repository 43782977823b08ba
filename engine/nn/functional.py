"""`engine.nn.functional`: the same functions as `engine.functional` (like torch.nn.functional)."""

from engine.functional import *  # noqa: F403
from engine.functional import __all__ as _core_all

__all__ = list(_core_all)
