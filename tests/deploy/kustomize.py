"""A small Kustomize renderer for the subset of kustomization.yaml the deploy manifests use.

Debian and PyPI carry no current kustomize, so the tests render overlays with this: `resources`
(files or directories with their own kustomization.yaml), `images` (newName/newTag/digest) and
`patches` with a `path` to a strategic-merge patch whose target is the resource of the same kind
and name. Anything else in a kustomization is refused rather than silently ignored.
test_kustomize.py checks it against `kubectl kustomize` where kubectl is installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "images", "patches"}

#: Strategic-merge keys of the Kubernetes lists this project patches (others are replaced whole).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}

Resource = dict[str, Any]


def render(directory: str | Path) -> list[Resource]:
    """The resources a kustomization directory renders to, base resources first."""
    directory = Path(directory)
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml: unsupported fields {sorted(unknown)}")

    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(render(path))
        else:
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)

    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise ValueError(f"{directory}: only `patches: - path: FILE` is supported")
        patch = yaml.safe_load((directory / patch_entry["path"]).read_text())
        target = _find(resources, patch)
        target.update(strategic_merge(target, patch))

    for image in kustomization.get("images", []):
        for resource in resources:
            _set_image(resource, image)
    return resources


def _find(resources: list[Resource], patch: Resource) -> Resource:
    key = (patch["kind"], patch["metadata"]["name"])
    for resource in resources:
        if (resource["kind"], resource["metadata"]["name"]) == key:
            return resource
    raise ValueError(f"patch targets {key[0]}/{key[1]}, which no resource defines")


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    """Merge `patch` into a copy of `base`: maps recursively, known lists by their merge key."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for name, value in patch.items():
            merged[name] = strategic_merge(base[name], value, name) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        merged = copy.deepcopy(base)
        for item in patch:
            match = next((i for i, b in enumerate(merged) if b[merge_key] == item[merge_key]), None)
            if match is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[match] = strategic_merge(merged[match], item)
        return merged
    return copy.deepcopy(patch)


def _split_image(reference: str) -> tuple[str, str]:
    """`repo/name:tag@digest` -> (`repo/name`, `tag`); the tag is "" when absent."""
    reference = reference.partition("@")[0]
    name, sep, tag = reference.rpartition(":")
    if not sep or "/" in tag:  # a registry port, not a tag
        return reference, ""
    return name, tag


def _set_image(resource: Resource, image: dict[str, str]) -> None:
    pod = resource.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, tag = _split_image(container["image"])
        if name != image["name"]:
            continue
        new_name = image.get("newName", name)
        if "digest" in image:
            container["image"] = f"{new_name}@{image['digest']}"
        else:
            new_tag = image.get("newTag", tag)
            container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
