"""The test renderer (tests/deploy/kustomize.py) agrees with real Kustomize on our manifests."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.deploy.kustomize import render, strategic_merge
from tests.deploy.manifests import KUBERNETES, KUSTOMIZATIONS
from tests.support.system import require_tool


def _keyed(resources):
    return {(r["kind"], r["metadata"]["name"]): r for r in resources}


@pytest.mark.system
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renderer_matches_kubectl_kustomize(kustomization):
    kubectl = require_tool("kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / kustomization)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    expected = _keyed(doc for doc in yaml.safe_load_all(out) if doc)
    assert _keyed(render(KUBERNETES / kustomization)) == expected


def test_merge_lists_by_key_and_replace_others():
    base = {
        "containers": [{"name": "a", "image": "x", "args": ["1"]}, {"name": "b", "image": "y"}],
        "tolerations": [{"key": "k1"}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    patch = {
        "containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}],
        "tolerations": [{"key": "k2"}],
        "volumeMounts": [{"name": "tmp2", "mountPath": "/tmp"}],
    }
    merged = strategic_merge(base, patch)
    assert merged["containers"] == [
        {"name": "a", "image": "x", "args": ["1"]},
        {"name": "b", "image": "z"},
        {"name": "c", "image": "w"},
    ]
    assert merged["tolerations"] == [{"key": "k2"}]
    assert merged["volumeMounts"] == [{"name": "tmp2", "mountPath": "/tmp"}]
    assert base["containers"][1]["image"] == "y", "the base is not modified"


def test_images_and_unsupported_fields(tmp_path):
    (tmp_path / "d.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "d"},
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {"name": "a", "image": "registry:5000/tapeserve:1"},
                                {"name": "b", "image": "other"},
                            ]
                        }
                    }
                },
            }
        )
    )
    kustomization = {
        "resources": ["d.yaml"],
        "images": [{"name": "registry:5000/tapeserve", "newName": "r/t", "newTag": "2"}],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    (deployment,) = render(tmp_path)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["r/t:2", "other"]

    kustomization["namePrefix"] = "x-"
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with pytest.raises(ValueError, match="namePrefix"):
        render(tmp_path)
