"""Readiness waits for every Gunicorn worker, not only the one that answers the probe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from serve.lifecycle.registry import ModelRegistry
from serve.workers import readiness as worker_readiness


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_ready_only_when_every_configured_worker_has_loaded(tmp_path: Path) -> None:
    assert not worker_readiness.all_workers_loaded(str(tmp_path), 1)
    worker_readiness.mark_loaded(str(tmp_path))
    assert worker_readiness.all_workers_loaded(str(tmp_path), 1)
    assert not worker_readiness.all_workers_loaded(str(tmp_path), 2)
    assert [p.name for p in tmp_path.iterdir()] == [f"loaded-{os.getpid()}"]


def test_markers_of_dead_workers_do_not_count_and_are_forgotten(tmp_path: Path) -> None:
    dead = _dead_pid()
    (tmp_path / f"loaded-{dead}").write_text("")
    assert worker_readiness.loaded_workers(str(tmp_path)) == 0
    worker_readiness.forget(str(tmp_path), dead)
    assert not (tmp_path / f"loaded-{dead}").exists()


def test_without_a_shared_runtime_dir_a_single_process_decides_alone() -> None:
    assert worker_readiness.all_workers_loaded(None, 4)


def test_registry_readiness_waits_for_the_other_workers(tmp_path: Path) -> None:
    repo = tmp_path / "empty-repository"
    repo.mkdir()
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    registry = ModelRegistry(repo, workers=2, runtime_dir=str(runtime))
    registry.start().join(10)
    assert registry.all_final()
    assert not registry.ready()  # this worker is done, the second has not reported
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (runtime / f"loaded-{other.pid}").write_text("")
        assert registry.ready()
    finally:
        other.kill()
        other.wait()
    assert not registry.ready()  # a dead worker's marker no longer counts
