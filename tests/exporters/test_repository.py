"""Atomic writes into a model repository: readers only ever see whole files and versions."""

from __future__ import annotations

import os
import threading

import numpy as np
import onnx
import pytest
from onnx import helper

from exporters.repository import atomic_write, next_version, publish_version, versions
from tests.exporters.onnx_builders import model


def big_model(seed: int) -> bytes:
    """A valid ~4 MB model whose weights differ per seed (large enough to be written in pieces)."""
    w = np.random.default_rng(seed).standard_normal((1024, 1024)).astype(np.float32)
    m = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", ["batch", 1024])],
              [("y", ["batch", 1024])], {"w": w})  # fmt: skip
    return m.SerializeToString()


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(".")]


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "m" / "config.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert leftovers(tmp_path) == []


def test_versions_are_positive_integer_folders(tmp_path):
    for name in ("1", "3", "0", "x", ".2.tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert versions(tmp_path) == [1, 3]
    assert next_version(tmp_path) == 4
    assert next_version(tmp_path / "missing") == 1


def test_publish_takes_next_free_version_and_refuses_to_clobber(tmp_path):
    assert publish_version(tmp_path, "m", {"model.onnx": b"a"})[0] == 1
    assert publish_version(tmp_path, "m", {"model.onnx": b"b"})[0] == 2
    with pytest.raises(FileExistsError, match="already exists"):
        publish_version(tmp_path, "m", {"model.onnx": b"c"}, version=1)
    v, folder = publish_version(tmp_path, "m", {"model.onnx": b"c"}, version=1, overwrite=True)
    assert (v, (folder / "model.onnx").read_bytes()) == (1, b"c")
    assert (tmp_path / "m" / "2" / "model.onnx").read_bytes() == b"b"
    assert oct(folder.stat().st_mode & 0o777) == "0o755"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [("", "empty"), ("a/b", "path separator"), ("..", "'..'"), (".hidden", "not allowed")],
)
def test_publish_rejects_names_the_server_would_refuse(tmp_path, name, reason):
    with pytest.raises(ValueError, match=reason):
        publish_version(tmp_path, name, {"model.onnx": b""})
    assert list(tmp_path.iterdir()) == []


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    got = []
    threads = [
        threading.Thread(target=lambda i=i: got.append(
            publish_version(tmp_path, "m", {"model.onnx": str(i).encode()})[0]))
        for i in range(8)
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 9))
    assert versions(tmp_path / "m") == list(range(1, 9))


def test_a_polling_reader_never_sees_a_partial_model(tmp_path):
    """One thread keeps publishing new versions and overwriting version 1 with 4 MB models;
    a reader polls the folder like a server would and parses every model.onnx it finds."""
    payloads = [big_model(seed) for seed in range(3)]
    publish_version(tmp_path, "m", {"model.onnx": payloads[0]}, version=1)
    stop = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            for v in versions(tmp_path / "m"):
                path = tmp_path / "m" / str(v) / "model.onnx"
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    problems.append(f"version {v} visible without model.onnx")
                    continue
                if data not in payloads:
                    problems.append(f"version {v}: {len(data)} bytes, not a whole model")
                    continue
                onnx.load_from_string(data)
                reads += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(12):
            data = payloads[i % len(payloads)]
            publish_version(tmp_path, "m", {"model.onnx": data})
            publish_version(tmp_path, "m", {"model.onnx": data}, version=1, overwrite=True)
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert reads > 0
    assert versions(tmp_path / "m") == list(range(1, 14))
    assert not [n for n in os.listdir(tmp_path / "m") if n.startswith(".")]
