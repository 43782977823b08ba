"""`import engine` reaches its subpackages as attributes, as `import torch` reaches torch.nn."""

from __future__ import annotations

import subprocess
import sys

import pytest

SUBMODULES = ["nn", "optim", "data", "datasets", "checkpoint", "train", "autodiff", "functional"]


@pytest.mark.parametrize("name", SUBMODULES)
def test_subpackage_is_an_attribute_of_engine_in_a_fresh_interpreter(name: str) -> None:
    code = (
        "import engine, importlib, sys\n"
        f"module = engine.{name}\n"
        f"assert module is importlib.import_module('engine.{name}'), module\n"
        f"assert '{name}' in dir(engine)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_torch_like_use_through_the_package_attribute() -> None:
    import engine

    model = engine.nn.Linear(3, 2)
    optimizer = engine.optim.SGD(model.parameters(), lr=0.1)
    loss = (model(engine.ones(4, 3)) ** 2).sum()
    loss.backward()
    optimizer.step()
    assert callable(engine.autodiff.grad)


def test_unknown_attribute_raises_attribute_error() -> None:
    import engine

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        engine.nope  # noqa: B018
