"""What the README promises a new user before any code runs: `make serve` serves the bundled
examples, every runtime dependency is explained, and the walkthrough's outputs stay out of git."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _dependency_names() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0] for spec in project["dependencies"]]


def test_readme_explains_every_runtime_dependency():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Dependencies", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in _dependency_names() if f"`{name}`" not in section]
    assert not missing, f"README's Dependencies section does not name {missing}"


def test_make_serve_serves_the_bundled_examples_even_when_models_exists(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # A checkout where the walkthrough already created ./models: `make -n` prints the command.
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "models").mkdir()
    stamp = tmp_path / ".venv" / ".installed"
    stamp.parent.mkdir()
    stamp.touch()  # newer than pyproject.toml: no install step
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(r"tapeserve serve --model-repository examples/models\s*$", out), out


def test_walkthrough_outputs_are_ignored_by_git(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    paths = ["checkpoints/digits-cnn/weights.npz", "models/digits/1/model.onnx"]
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert done.stdout.split() == paths, done.stdout + done.stderr
