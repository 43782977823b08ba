"""The pure parts of the server core: config validation, version policies, batcher, sizing."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from serve.core.batcher import Batcher, DeadlineExceeded, QueueFull
from serve.lifecycle import runtime
from serve.lifecycle.config import ConfigError, parse_config
from serve.lifecycle.repository import scan_repository, select_versions
from serve.settings import Settings
from tests.serve import builders


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"max_batch_size": -1}, "max_batch_size must be an integer >= 0, got -1"),
        ({"max_batch_size": "8"}, 'max_batch_size must be an integer >= 0, got "8"'),
        ({"max_queue_delay_ms": True}, "max_queue_delay_ms must be a number"),
        ({"max_queue_size": 0}, "max_queue_size must be an integer >= 1"),
        ({"instance_count": 0}, "instance_count must be an integer >= 1"),
        ({"version_policy": {"newest": 1}}, "unknown policy 'newest'"),
        ({"version_policy": {"all": False}}, "version_policy.all must be true"),
        ({"version_policy": {"specific": []}}, "non-empty list"),
        ({"device": "tpu"}, "device must be one of auto|cpu|cuda|cuda:N"),
        ({"warmup": [{"x": [1, 2]}]}, "must be an object with 'shape' and 'data'"),
        ({"max_batch_sise": 8}, "unknown key(s) max_batch_sise"),
        ([1], "must hold a JSON object"),
    ],
)
def test_bad_config_names_the_problem(raw, message) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert message in str(info.value)


def test_config_defaults_and_values() -> None:
    config = parse_config({"max_batch_size": 8, "max_queue_delay_ms": 2, "device": "CUDA:1"})
    assert (config.max_batch_size, config.max_queue_delay_ms, config.device) == (8, 2.0, "cuda:1")
    assert parse_config({}).version_policy == {"latest": 1}
    assert parse_config({}).warmup is True


def test_version_policies(tmp_path) -> None:
    available = {v: tmp_path / str(v) for v in (1, 2, 5)}
    assert list(select_versions(available, {"latest": 1})) == [5]
    assert list(select_versions(available, {"latest": 2})) == [2, 5]
    assert list(select_versions(available, {"all": True})) == [1, 2, 5]
    assert list(select_versions(available, {"specific": [1, 5]})) == [1, 5]
    with pytest.raises(ConfigError, match=r"version\(s\) 3 that have no model.onnx"):
        select_versions(available, {"specific": [3]})


def test_scan_repository_marks_bad_models(tmp_path) -> None:
    builders.write_model(tmp_path, "good", builders.identity(), version=3)
    builders.write_model(tmp_path, "good", builders.identity(), version=12)
    (tmp_path / "good" / "latest").mkdir()  # not a version: ignored
    (tmp_path / "empty").mkdir()
    builders.write_model(tmp_path, "typo", builders.identity())
    (tmp_path / "typo" / "config.json").write_text("{not json")
    entries = {e.name: e for e in scan_repository(tmp_path)}
    assert list(entries["good"].versions) == [12] and entries["good"].error is None
    assert "no version folder with a model.onnx" in entries["empty"].error
    assert "config.json is not valid JSON" in entries["typo"].error
    with pytest.raises(FileNotFoundError):
        scan_repository(tmp_path / "missing")


def test_settings_from_env_round_trip() -> None:
    settings = Settings(model_repository="/m", workers=3, strict_readiness=True, device="cuda:0")
    again = Settings.from_env(settings.to_env())
    assert again == settings
    with pytest.raises(ValueError, match="TAPESERVE_WORKERS"):
        Settings.from_env({"TAPESERVE_WORKERS": "many"})
    with pytest.raises(ValueError, match="device must be one of"):
        Settings(device="gpu")


def test_intra_op_threads_divide_usable_cpus() -> None:
    cpus = runtime.usable_cpus()
    assert 1 <= cpus <= len(__import__("os").sched_getaffinity(0))
    assert runtime.intra_op_threads(1) == cpus
    assert runtime.intra_op_threads(cpus * 4) == 1
    assert runtime.intra_op_threads(2, 1) == max(1, cpus // 2)


class _RecordingRunner:
    """A real computation (x * 2 + row sums) that records the batch sizes it was given."""

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, feeds):
        self.gate.wait()
        x = feeds["x"]
        self.batches.append(x.shape[0])
        time.sleep(self.delay)
        return [x * 2, x.sum(axis=1)]


def test_batcher_batches_queued_requests_and_splits_exactly() -> None:
    runner = _RecordingRunner()
    runner.gate.clear()  # hold the runner so requests pile up in the queue
    batcher = Batcher("m", "1", [runner], max_batch_size=64)
    first = batcher.submit({"x": np.zeros((1, 3), np.float32)})
    time.sleep(0.05)  # the runner has taken `first` and waits at the gate
    inputs = [np.full((i % 3 + 1, 3), i, np.float32) for i in range(10)]
    futures = [batcher.submit({"x": x}) for x in inputs]
    runner.gate.set()
    first.result(5)
    for x, future in zip(inputs, futures, strict=True):
        doubled, sums = future.result(5)
        np.testing.assert_array_equal(doubled, x * 2)
        np.testing.assert_array_equal(sums, x.sum(axis=1))
    assert runner.batches == [1, sum(x.shape[0] for x in inputs)]
    batcher.close()


def test_batcher_respects_max_batch_size_and_shapes() -> None:
    runner = _RecordingRunner()
    runner.gate.clear()
    batcher = Batcher("m", "1", [runner], max_batch_size=4)
    batcher.submit({"x": np.zeros((1, 3), np.float32)})
    time.sleep(0.05)
    futures = [batcher.submit({"x": np.ones((2, 3), np.float32)}) for _ in range(3)]
    futures.append(batcher.submit({"x": np.ones((1, 5), np.float32)}))  # other shape
    runner.gate.set()
    for f in futures:
        f.result(5)
    assert runner.batches == [1, 4, 2, 1]
    batcher.close()


def test_batcher_no_wait_when_idle_and_delay_when_set() -> None:
    runner = _RecordingRunner()
    idle = Batcher("m", "1", [runner], max_batch_size=8)
    idle.submit({"x": np.ones((1, 3), np.float32)}).result(5)
    delayed = Batcher("m", "2", [runner], max_batch_size=8, max_queue_delay_ms=200)
    futures = [delayed.submit({"x": np.ones((1, 3), np.float32)}) for _ in range(3)]
    for f in futures:
        f.result(5)
    assert runner.batches == [1, 3]  # the delayed batcher gathered all three
    idle.close()
    delayed.close()


def test_batcher_queue_bound_and_deadline() -> None:
    runner = _RecordingRunner()
    runner.gate.clear()
    batcher = Batcher("m", "1", [runner], max_batch_size=8, max_queue_size=2)
    running = batcher.submit({"x": np.ones((1, 3), np.float32)})
    time.sleep(0.05)
    expired = batcher.submit({"x": np.ones((1, 3), np.float32)}, deadline=time.monotonic())
    batcher.submit({"x": np.ones((1, 3), np.float32)})
    with pytest.raises(QueueFull, match="queue of model m version 1 is full"):
        batcher.submit({"x": np.ones((1, 3), np.float32)})
    runner.gate.set()
    running.result(5)
    with pytest.raises(DeadlineExceeded):
        expired.result(5)
    batcher.close()


def test_batcher_isolates_a_failing_request() -> None:
    def runner(feeds):
        x = feeds["x"]
        if (x < 0).any():
            raise ValueError("negative input")
        return [x + 1]

    gate = threading.Event()
    batcher = Batcher("m", "1", [lambda f: (gate.wait(), runner(f))[1]], max_batch_size=8)
    batcher.submit({"x": np.zeros((1, 2))})
    time.sleep(0.05)
    good = batcher.submit({"x": np.ones((1, 2))})
    bad = batcher.submit({"x": -np.ones((1, 2))})
    gate.set()
    np.testing.assert_array_equal(good.result(5)[0], np.full((1, 2), 2.0))
    with pytest.raises(ValueError, match="negative input"):
        bad.result(5)
    batcher.close()


def test_unbatched_model_runs_requests_as_given() -> None:
    runner = _RecordingRunner()
    runner.gate.clear()
    batcher = Batcher("m", "1", [runner], max_batch_size=0)
    futures = [batcher.submit({"x": np.ones((2, 3), np.float32)}) for _ in range(3)]
    runner.gate.set()
    for f in futures:
        assert f.result(5)[0].shape == (2, 3)
    assert runner.batches == [2, 2, 2]
    batcher.close()


def test_example_repository_is_valid() -> None:
    from serve.settings import BUNDLED_REPOSITORY

    entries = scan_repository(BUNDLED_REPOSITORY)
    assert entries and all(e.error is None and e.versions for e in entries)
    json.loads((BUNDLED_REPOSITORY / "example" / "config.json").read_text())


def test_batcher_survives_a_runner_that_misbehaves() -> None:
    """A runner returning garbage fails its batch; the runner thread keeps serving."""
    gate = threading.Event()
    answers = iter([[np.zeros((1, 2))], None, [np.ones((1, 2))]])

    def runner(feeds):
        gate.wait()
        return next(answers)

    batcher = Batcher("m", "1", [runner], max_batch_size=8)
    first = batcher.submit({"x": np.zeros((1, 2))})
    time.sleep(0.05)
    broken = [batcher.submit({"x": np.zeros((1, 2))}) for _ in range(2)]  # batched: gets None
    gate.set()
    first.result(5)
    for future in broken:
        with pytest.raises(Exception):  # noqa: B017 - whatever the garbage caused
            future.result(5)
    np.testing.assert_array_equal(
        batcher.submit({"x": np.ones((1, 2))}).result(5)[0], np.ones((1, 2))
    )
    batcher.close()


def test_idle_batcher_runs_a_request_in_the_calling_thread() -> None:
    threads = []

    def runner(feeds):
        threads.append(threading.current_thread())
        return [feeds["x"] + 1]

    batcher = Batcher("m", "1", [runner], max_batch_size=8)
    out = batcher.infer({"x": np.zeros((2, 3))})
    np.testing.assert_array_equal(out[0], np.ones((2, 3)))
    assert threads == [threading.current_thread()]  # no hand-off to a runner thread
    delayed = Batcher("m", "2", [runner], max_batch_size=8, max_queue_delay_ms=1)
    delayed.infer({"x": np.zeros((1, 3))})
    assert threads[-1] is not threading.current_thread()  # a queue delay always queues
    batcher.close()
    delayed.close()


def test_infer_deadline_while_the_instance_is_busy() -> None:
    runner = _RecordingRunner()
    runner.gate.clear()
    batcher = Batcher("m", "1", [runner], max_batch_size=8)
    busy = threading.Thread(target=batcher.infer, args=({"x": np.ones((1, 3), np.float32)},))
    busy.start()  # runs directly in that thread and waits at the gate
    time.sleep(0.05)
    with pytest.raises(DeadlineExceeded, match="deadline exceeded while queued"):
        batcher.infer({"x": np.ones((1, 3), np.float32)}, deadline=time.monotonic() + 0.05)
    queued = []
    waiter = threading.Thread(
        target=lambda: queued.append(batcher.infer({"x": np.ones((2, 3), np.float32)}))
    )
    waiter.start()
    time.sleep(0.05)
    runner.gate.set()
    busy.join(5)
    waiter.join(5)
    assert queued and queued[0][0].shape == (2, 3)
    assert runner.batches == [1, 2]  # the expired request never ran
    batcher.close()


def test_instances_run_batches_side_by_side() -> None:
    """instance_count 2: two runners, each with its own session, run two batches at once."""
    running, both = [], threading.Barrier(2, timeout=5)

    def make_runner(name):
        def runner(feeds):
            running.append(name)
            both.wait()  # only returns when the other instance runs at the same time
            return [feeds["x"]]

        return runner

    batcher = Batcher("m", "1", [make_runner("a"), make_runner("b")], max_batch_size=1)
    futures = [batcher.submit({"x": np.full((1, 1), i)}) for i in range(2)]
    assert [f.result(5)[0][0, 0] for f in futures] == [0, 1]
    assert sorted(running) == ["a", "b"]
    batcher.close()
