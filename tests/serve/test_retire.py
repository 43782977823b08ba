"""A swapped-out model version closes once the requests that resolved it are answered."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from serve.core.batcher import QueueFull
from serve.lifecycle.control import ControlSettings, ModelController, close_when_idle
from serve.lifecycle.registry import ModelRegistry
from tests.serve import builders

FEEDS = {"a": np.ones((1, 4), np.float32), "b": np.ones((1, 4), np.float32)}


def _serving(tmp_path: Path, retire_timeout_s: float) -> tuple[ModelRegistry, ModelController]:
    builders.write_model(tmp_path, "m", builders.add_mul(), 1, {"max_batch_size": 4})
    settings = ControlSettings(
        mode="poll", poll_interval=60, probe=False, retire_timeout_s=retire_timeout_s
    )
    registry = ModelRegistry(tmp_path, "cpu", 1)
    registry.start()
    assert registry.wait_loaded(60)
    return registry, ModelController(registry, settings)


def _swap_to_version_2(tmp_path: Path, registry, controller) -> None:
    builders.write_model(tmp_path, "m", builders.add_mul(), 2)
    controller.poll_once()
    controller.poll_once()  # files unchanged since the previous scan: loaded and swapped in
    assert registry.version("m").version == 2


def _closed(batcher) -> bool:
    try:
        batcher.infer(FEEDS)
    except QueueFull as exc:
        assert "shutting down" in str(exc)
        return True
    return False


def _wait_closed(batcher, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _closed(batcher):
            return True
        time.sleep(0.05)
    return False


def test_retired_version_serves_its_holders_then_closes(tmp_path: Path) -> None:
    registry, controller = _serving(tmp_path, retire_timeout_s=60)
    old = registry.version("m")
    assert old.hold()  # a request resolved version 1 just before the swap
    _swap_to_version_2(tmp_path, registry, controller)
    assert old.retired and not old.hold(), "a retired version takes no new holders"
    time.sleep(1.0)
    total, product = old.batcher.infer(FEEDS)  # the holder still runs on it
    assert total.tolist() == [[2.0] * 4] and product.tolist() == [[1.0] * 4]
    old.release()  # answered: nothing holds version 1 any more
    assert _wait_closed(old.batcher, 5), "closed soon after its last request, not at the bound"
    assert not _closed(registry.version("m").batcher)


def test_idle_version_closes_at_once_and_a_stuck_one_at_the_bound(tmp_path: Path, caplog) -> None:
    registry, controller = _serving(tmp_path, retire_timeout_s=60)
    idle = registry.version("m")
    _swap_to_version_2(tmp_path, registry, controller)
    assert _wait_closed(idle.batcher, 5)

    stuck = registry.version("m")
    assert stuck.hold()
    with caplog.at_level("WARNING", logger="tapeserve.control"):
        close_when_idle([stuck], timeout_s=0.3)  # returns: the bound, not the holder, ends it
    assert _closed(stuck.batcher)
    assert "1 request(s) still running 0.3 s after it was retired" in caplog.text
