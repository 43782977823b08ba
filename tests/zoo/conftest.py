"""The zoo's small members, each built once per test session into a temporary repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.system import require_module

#: What each member needs beyond the server's own dependencies (installed by `make install` and
#: .ci/run; a missing one skips locally and fails under TAPESERVE_REQUIRE_SYSTEM_TESTS=1).
NEEDS = {
    "resnet50": ("torch", "onnxscript"),
    "resnet50_fp16": ("torch", "onnxscript"),
    "resnet50_int8": ("torch", "onnxscript"),
    "bert": ("torch", "transformers"),
    "bert_optimized": ("torch", "transformers"),
    "sklearn_pipeline": ("sklearn", "skl2onnx", "pandas"),
    "lightgbm": ("lightgbm", "onnxmltools"),
    "xgboost": ("xgboost", "onnxmltools"),
}


@pytest.fixture(scope="session")
def zoo_repository(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def zoo(zoo_repository) -> Callable:
    """`zoo(name)`: the small member `name`, built on first use and cached for the session."""
    from modelzoo import build

    built: dict = {}

    def get(name: str):
        if name not in built:
            for module in NEEDS.get(name, ()):
                require_module(module)
            built[name] = build(name, zoo_repository, size="small")
        return built[name]

    return get
