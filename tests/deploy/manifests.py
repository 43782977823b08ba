"""Shared helpers for the deployment tests: where things are and how to look them up."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu"]
#: Oldest and newest Kubernetes minor versions the manifests must validate against.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]

Resource = dict[str, Any]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def by_kind(resources: list[Resource], kind: str) -> Resource:
    """The one resource of `kind`; fails when there is none or several."""
    matches = [r for r in resources if r["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def validate(resource: Resource, version: str) -> None:
    """Strict schema validation (unknown fields are errors) against one Kubernetes version."""
    kubernetes_validate.validate(resource, version, strict=True)


def deploy_module(name: str) -> ModuleType:
    """A Python script of deploy/ (e.g. gpu_check), imported under its own name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
