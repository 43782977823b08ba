"""Skip-or-fail helpers for tests that need something outside the Python environment.

Locally a missing tool skips the test with a reason; under TAPESERVE_REQUIRE_SYSTEM_TESTS=1 (set by
.ci/run) it fails instead, so CI can never report a pass built on skips.
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType

import pytest

REQUIRED = os.environ.get("TAPESERVE_REQUIRE_SYSTEM_TESTS") == "1"


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (TAPESERVE_REQUIRE_SYSTEM_TESTS=1: .ci/run must install it)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """Return the path of executable `name`, or skip/fail when it is not installed."""
    path = shutil.which(name)
    if path is None:
        _missing(f"system tool {name!r} is not installed")
    return path  # type: ignore[return-value]


def require_module(name: str) -> ModuleType:
    """Import an optional test dependency, or skip/fail when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"optional test dependency {name!r} is not installed")
        raise  # unreachable: _missing raises
