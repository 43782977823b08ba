"""Fixtures shared by the exporter tests."""

from __future__ import annotations

import pytest

from engine import recipes


@pytest.fixture(scope="session")
def trained_mlp(tmp_path_factory):
    """(RecipeResult, checkpoint folder) of a digits MLP trained for one epoch: a real trained
    model, quick to make, shared by the tests that export a checkpoint."""
    out = tmp_path_factory.mktemp("ckpt") / "mlp"
    result = recipes.run("digits-mlp", epochs=1, out=out, seed=1, progress=False)
    return result, out
