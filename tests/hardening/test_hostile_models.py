"""Hostile model files are refused, with a clear reason, before onnxruntime reads them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import external_data_helper

from serve.lifecycle.checks import CheckLimits, ModelRejected, check_model_file
from serve.lifecycle.load_probe import probe_model
from tests.hardening import hostile


def _rejected(path: Path, **limits) -> str:
    with pytest.raises(ModelRejected) as info:
        check_model_file(path, limits=CheckLimits(**limits))
    return info.value.reason


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside every model folder that a hostile model tries to read."""
    path = tmp_path / "secret.bin"
    path.write_bytes(hostile.weights_bytes())
    return path


def test_benign_external_data_is_accepted_and_loads(tmp_path: Path) -> None:
    model = hostile.add_weight_model()
    external_data_helper.convert_model_to_external_data(
        model, location="weights.bin", size_threshold=0
    )
    path = hostile.write_version(tmp_path, "m", 1, model)
    external_data_helper.write_external_data_tensors(model, str(path.parent))
    path.write_bytes(model.SerializeToString())
    checked = check_model_file(path)
    assert checked.external_bytes == 16
    assert [p.name for p in checked.data_files] == ["weights.bin"]
    x = np.ones((2, 4), np.float32)
    (y,) = ort.InferenceSession(str(path)).run(None, {"x": x})
    np.testing.assert_array_equal(y, x + np.arange(4, dtype=np.float32))


def test_symlink_that_stays_inside_the_version_folder_is_accepted(tmp_path: Path) -> None:
    path = hostile.write_version(
        tmp_path, "m", 1, hostile.point_external(hostile.add_weight_model(), "link.bin")
    )
    (path.parent / "data").mkdir()
    (path.parent / "data" / "w.bin").write_bytes(hostile.weights_bytes())
    (path.parent / "link.bin").symlink_to(path.parent / "data" / "w.bin")
    assert check_model_file(path).external_bytes == 16


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("../secret.bin", "contains '..'"),
        ("../../../secret.bin", "contains '..'"),
        ("a/../../secret.bin", "contains '..'"),
        ("sub/../../../../etc/passwd", "contains '..'"),
        ("/etc/passwd", "absolute path"),
        ("C:/Windows/win.ini", "absolute path"),
        ("..\\secret.bin", "backslash"),
        ("w\x00.bin", "NUL"),
        ("", "names no location"),
        ("missing.bin", "does not exist"),
    ],
)
def test_bad_locations_are_refused(tmp_path: Path, secret: Path, location: str, expected: str):
    model = hostile.point_external(hostile.add_weight_model(), location)
    path = hostile.write_version(tmp_path / "repo", "m", 1, model)
    assert expected in _rejected(path)


def test_absolute_location_of_an_existing_file_is_refused(tmp_path: Path, secret: Path) -> None:
    model = hostile.point_external(hostile.add_weight_model(), str(secret))
    reason = _rejected(hostile.write_version(tmp_path / "repo", "m", 1, model))
    assert "absolute path" in reason and "relative to the model's version folder" in reason


def test_symlink_out_of_the_version_folder_is_refused(tmp_path: Path, secret: Path) -> None:
    model = hostile.point_external(hostile.add_weight_model(), "weights.bin")
    path = hostile.write_version(tmp_path / "repo", "m", 1, model)
    (path.parent / "weights.bin").symlink_to(secret)
    reason = _rejected(path)
    assert "outside the model's version folder" in reason and str(secret) in reason


def test_symlinked_directory_out_of_the_version_folder_is_refused(
    tmp_path: Path, secret: Path
) -> None:
    model = hostile.point_external(hostile.add_weight_model(), "dir/secret.bin")
    path = hostile.write_version(tmp_path / "repo", "m", 1, model)
    (path.parent / "dir").symlink_to(secret.parent)
    assert "outside the model's version folder" in _rejected(path)


def test_symlink_to_a_sibling_version_is_refused(tmp_path: Path) -> None:
    model = hostile.point_external(hostile.add_weight_model(), "weights.bin")
    path = hostile.write_version(tmp_path, "m", 2, model)
    other = tmp_path / "m" / "1"
    other.mkdir()
    (other / "weights.bin").write_bytes(hostile.weights_bytes())
    (path.parent / "weights.bin").symlink_to(other / "weights.bin")
    assert "outside the model's version folder" in _rejected(path)


def test_model_file_symlinked_from_outside_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(hostile.add_weight_model().SerializeToString())
    folder = tmp_path / "repo" / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").symlink_to(outside)
    reason = _rejected(folder / "model.onnx")
    assert "model file 'model.onnx' resolves to" in reason and "outside" in reason


def test_hard_linked_data_file_is_refused(tmp_path: Path, secret: Path) -> None:
    model = hostile.point_external(hostile.add_weight_model(), "weights.bin")
    path = hostile.write_version(tmp_path / "repo", "m", 1, model)
    os.link(secret, path.parent / "weights.bin")
    reason = _rejected(path)
    assert "is a hard link (2 links)" in reason and "weights.bin" in reason


def test_hard_linked_model_file_is_refused(tmp_path: Path) -> None:
    path = hostile.write_version(tmp_path, "m", 1, hostile.add_weight_model())
    os.link(path, tmp_path / "alias.onnx")
    assert "model file 'model.onnx' is a hard link" in _rejected(path)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 10**12, "holds only 16 bytes"),
        (2**62, 16, "holds only 16 bytes"),
        (8, 16, "holds only 16 bytes"),
        (0, 8, "(16 bytes) but its external data length is 8"),
        (-1, 16, "negative external data offset"),
    ],
)
def test_sizes_out_of_bounds_are_refused(
    tmp_path: Path, offset: int, length: int, expected: str
) -> None:
    model = hostile.point_external(hostile.add_weight_model(), "w.bin", offset, length)
    path = hostile.write_version(tmp_path, "m", 1, model)
    (path.parent / "w.bin").write_bytes(hostile.weights_bytes())
    assert expected in _rejected(path)


def test_total_external_size_cap(tmp_path: Path) -> None:
    model = hostile.point_external(hostile.add_weight_model(), "w.bin")
    path = hostile.write_version(tmp_path, "m", 1, model)
    (path.parent / "w.bin").write_bytes(hostile.weights_bytes())
    assert "more than the limit of 8 bytes" in _rejected(path, max_external_bytes=8)
    assert "over the limit of 10" in _rejected(path, max_model_bytes=10)


def test_external_data_inside_a_subgraph_is_checked(tmp_path: Path) -> None:
    path = hostile.write_version(
        tmp_path, "m", 1, hostile.subgraph_external_model("../../secret.bin")
    )
    assert "tensor 'k'" in _rejected(path)


def test_custom_op_domain_is_refused_unless_allowed(tmp_path: Path) -> None:
    path = hostile.write_version(tmp_path, "m", 1, hostile.custom_domain_model())
    reason = _rejected(path)
    assert "custom domain 'com.example.evil'" in reason and "allowed_custom_op_domains" in reason
    allowed = CheckLimits(allowed_custom_op_domains=frozenset({"com.example.evil"}))
    check_model_file(path, limits=allowed)


def _single_node_model(op: str, domain: str, imports: tuple = (), **attrs):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node(op, ["x"], ["y"], domain=domain, **attrs)
    opsets = tuple(imports) + (((domain, 1),) if domain not in ("", "ai.onnx") else ())
    return hostile._model(helper.make_graph([node], "m", [x], [y]), extra_opsets=opsets)


def test_imported_operator_sets_no_node_uses_are_harmless(tmp_path: Path) -> None:
    """Judged by operators: onnxruntime's transformer optimizer imports ai.onnx.preview,
    com.microsoft.experimental, org.pytorch.aten... that no node of the model uses."""
    unused = (("ai.onnx.preview", 1), ("com.microsoft.experimental", 1), ("com.example.x", 1))
    path = hostile.write_version(tmp_path, "m", 1, _single_node_model("Relu", "", unused))
    check_model_file(path)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # and onnxruntime agrees


def test_microsoft_contrib_operators_are_onnxruntimes_own(tmp_path: Path) -> None:
    model = _single_node_model("FastGelu", "com.microsoft")
    check_model_file(hostile.write_version(tmp_path, "m", 1, model))


def test_an_operator_onnxruntime_does_not_implement_is_refused_in_any_domain(tmp_path: Path):
    for domain, expected in (("", "no ONNX operator"), ("com.microsoft", "custom-op library")):
        path = hostile.write_version(
            tmp_path, f"m{len(domain)}", 1, _single_node_model("Pwn", domain)
        )
        reason = _rejected(path)
        assert "'Pwn'" in reason and expected in reason, reason


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"\x08\xff\xff\xff\xff not a protobuf" * 10)
    assert "not a valid ONNX model" in _rejected(folder / "model.onnx")


def test_constant_shape_bomb_is_refused_statically(tmp_path: Path) -> None:
    path = hostile.write_version(tmp_path, "m", 1, hostile.constant_shape_bomb())
    reason = _rejected(path)
    assert "ConstantOfShape" in reason and "[4194304, 4096]" in reason


def test_computed_shape_bomb_is_caught_by_the_load_probe(tmp_path: Path) -> None:
    """A 64 GiB request that static checks cannot see: the child runs out, the caller does not."""
    path = hostile.write_version(tmp_path, "m", 1, hostile.computed_shape_bomb())
    check_model_file(path)  # statically clean
    result = probe_model(path, memory_limit_bytes=2 * 1024**3, timeout_s=60)
    assert not result.ok
    assert "ran out of memory" in result.reason and "2048 MiB" in result.reason


def test_load_probe_accepts_a_good_model_and_reports_its_memory(tmp_path: Path) -> None:
    path = hostile.write_version(tmp_path, "m", 1, hostile.add_weight_model())
    result = probe_model(path)
    assert result.ok, result.reason
    assert result.reason is None and result.peak_rss_bytes > 0


def test_load_probe_reports_a_timeout(tmp_path: Path) -> None:
    path = hostile.write_version(tmp_path, "m", 1, hostile.add_weight_model())
    result = probe_model(path, timeout_s=0)
    assert not result.ok and "did not finish within 0 s (load probe killed)" in result.reason


def test_load_probe_reports_a_session_error(tmp_path: Path) -> None:
    path = hostile.write_version(tmp_path, "m", 1, hostile.custom_domain_model())
    result = probe_model(path)
    assert not result.ok
    assert result.reason.startswith("failed while creating the inference session")
    assert "Pwn" in result.reason


def test_server_refuses_hostile_models_and_keeps_serving_the_others(
    tmp_path: Path, secret: Path, tapeserve_server
) -> None:
    repo = tmp_path / "repo"
    hostile.write_version(repo, "good", 1, hostile.add_weight_model())
    expected = {
        "dotdot": "contains '..'",
        "absolute": "absolute path",
        "symlink": "outside the model's version folder",
        "hardlink": "is a hard link",
        "oversized": "holds only 16 bytes",
        "custom": "custom domain 'com.example.evil'",
        "bomb": "ConstantOfShape",
        "computed_bomb": "load probe: ran out of memory",
        "garbage": "not a valid ONNX model",
    }
    weights = hostile.add_weight_model
    hostile.write_version(repo, "dotdot", 1, hostile.point_external(weights(), "../../secret.bin"))
    hostile.write_version(repo, "absolute", 1, hostile.point_external(weights(), str(secret)))
    link = hostile.write_version(repo, "symlink", 1, hostile.point_external(weights(), "w.bin"))
    (link.parent / "w.bin").symlink_to(secret)
    hard = hostile.write_version(repo, "hardlink", 1, hostile.point_external(weights(), "w.bin"))
    os.link(secret, hard.parent / "w.bin")
    big = hostile.point_external(weights(), "w.bin", length=10**12)
    (hostile.write_version(repo, "oversized", 1, big).parent / "w.bin").write_bytes(
        hostile.weights_bytes()
    )
    hostile.write_version(repo, "custom", 1, hostile.custom_domain_model())
    hostile.write_version(repo, "bomb", 1, hostile.constant_shape_bomb())
    hostile.write_version(repo, "computed_bomb", 1, hostile.computed_shape_bomb())
    (repo / "garbage" / "1").mkdir(parents=True)
    (repo / "garbage" / "1" / "model.onnx").write_bytes(b"\x0a\xff\xff\xff\x0f" * 20)

    runtime = tmp_path / "runtime"
    srv = tapeserve_server(repo, workers=2, env={"TAPESERVE_RUNTIME_DIR": str(runtime)})
    rows = {row["name"]: row for row in srv.post("/v2/repository/index").json()}
    assert rows["good"]["state"] == "READY"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}
    for name, why in expected.items():
        assert rows[name]["state"] == "UNAVAILABLE", name
        assert why in rows[name]["reason"], (name, rows[name]["reason"])
        refused = srv.post(f"/v2/models/{name}/infer", json=body)
        assert refused.status_code == 503 and why in refused.json()["error"]
        good = srv.post("/v2/models/good/infer", json=body)  # the others keep serving
        assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [0, 1, 2, 3]
    assert srv.get("/v2/health/live").status_code == 200
    metrics_text = srv.metrics()
    for name in expected:
        assert f'tapeserve_model_load_failures_total{{model="{name}"}} 2.0' in metrics_text
    assert "Traceback" not in srv.log()
    # Only `good` and `computed_bomb` pass the static checks; each was probed once, not per worker.
    assert len(list(runtime.glob("probe-*.json"))) == 2


def test_probe_helper_exits_quietly_when_its_worker_is_gone() -> None:
    """A worker that exits right after boot closes the helper's pipe: no traceback, status 0."""
    import subprocess
    import sys

    helper = subprocess.Popen(
        [sys.executable, "-m", "serve.lifecycle.load_probe", "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    helper.stdout.close()  # the reader is gone before the helper says "ready"
    _, err = helper.communicate(timeout=60)
    assert helper.returncode == 0, err.decode()
    assert b"Traceback" not in err, err.decode()
