"""pad_variable_length_inputs: requests of different lengths share batches, each answer equals
the model run on that request alone; models whose outputs cannot be cut back, or whose answers
change with padding, are refused with the reason."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serve.core.batcher import Batcher
from serve.core.padding import PaddingPlan, RunCost
from serve.lifecycle import batch_dims, runtime
from serve.lifecycle.config import ConfigError, parse_config
from tests.serve import builders
from tests.serve.test_batching import counts
from tests.support.server import start_server

# ---------------------------------------------------------------------------------------------
# The plan, the cost model and the batcher (no onnxruntime)


def _sequence_plan() -> PaddingPlan:
    """x [N, S] padded with -1; outputs: doubled [N, S] follows S, total [N] follows nothing."""
    return PaddingPlan(1, {"x": ((1, 0),)}, {"x": np.float32(-1)}, (((1, 0),), ()))


def _sequence_model(feeds):
    """What the plan describes: padded positions (-1) are left out of the total."""
    x = feeds["x"]
    return [x * 2, np.where(x == -1, 0, x).sum(axis=1)]


def test_plan_pads_to_the_longest_and_cuts_each_answer_back() -> None:
    plan = PaddingPlan(
        2,
        {"a": ((1, 0),), "b": ((1, 1), (2, 0))},
        {"a": np.int64(7), "b": np.float32(0)},
        (((1, 0), (2, 1)), ()),
    )
    one = {"a": np.ones((1, 2), np.int64), "b": np.ones((1, 3, 2), np.float32)}
    two = {"a": np.full((2, 4), 5, np.int64), "b": np.full((2, 1, 4), 3, np.float32)}
    assert plan.lengths(one) == (2, 3) and plan.lengths(two) == (4, 1)
    assert plan.lengths({"a": one["a"], "b": two["b"]}) is None  # axis 0: 2 in a, 4 in b
    assert plan.key(one, (2, 3)) == plan.key(two, (4, 1))
    feeds = plan.pad([one, two], [(2, 3), (4, 1)], (4, 3))
    assert feeds["a"].tolist() == [[1, 1, 7, 7], [5, 5, 5, 5], [5, 5, 5, 5]]
    assert feeds["b"].shape == (3, 3, 4) and feeds["b"][0].sum() == 6 and feeds["b"][1:].sum() == 24
    outputs = [np.arange(3 * 4 * 3).reshape(3, 4, 3), np.arange(3)]
    assert plan.fits(outputs, (4, 3)) and not plan.fits(outputs, (4, 2))
    first = plan.cut(outputs, 0, 1, (2, 3))
    np.testing.assert_array_equal(first[0], outputs[0][:1, :2, :3])
    assert first[0].flags.c_contiguous
    np.testing.assert_array_equal(plan.cut(outputs, 1, 3, (4, 1))[1], [1, 2])


def test_run_cost_fits_overhead_and_per_element_despite_outliers() -> None:
    cost = RunCost()
    assert cost.overhead_elements() is None
    for i in range(40):
        size = 16 * (1 + i % 8)
        slow = 0.5 if i % 9 == 4 else 0.0  # a run preempted by a busy machine
        cost.observe(size, 0.015 + 0.002 * size + slow)
    overhead, per_element = cost.fit()
    assert overhead == pytest.approx(0.015, rel=0.01)
    assert per_element == pytest.approx(0.002, rel=0.01)
    assert cost.overhead_elements() == pytest.approx(7.5, rel=0.02)
    same = RunCost()
    for _ in range(20):
        same.observe(64, 0.1)
    assert same.overhead_elements() is None  # one size: the two costs cannot be told apart
    for i in range(7):  # tried again only after `refit` more runs
        same.observe(32 * (i % 3 + 1), 0.05 * (i % 3 + 1))
    assert same.overhead_elements() is None
    same.observe(64, 0.1)
    assert same.overhead_elements() is not None
    flat = RunCost()
    for i in range(20):
        flat.observe(10 + i, 0.01)
    assert flat.overhead_elements() == float("inf")  # time does not grow: pad freely


class _Held:
    """A runner that waits at its gate, records the shapes it ran and takes `cost(elements)`
    seconds a run."""

    def __init__(self, cost=lambda elements: 0.0, model=_sequence_model) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.shapes: list[tuple] = []
        self.cost, self.model = cost, model

    def __call__(self, feeds):
        self.gate.wait()
        x = feeds["x"]
        self.shapes.append(x.shape)
        time.sleep(self.cost(x.size))
        return self.model(feeds)


def _requests(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.random((1 + i % 2, n)).astype(np.float32)} for i, n in enumerate(lengths)]


def _learned(runner: _Held, rows: int = 1) -> Batcher:
    """A padding batcher whose cost model has seen 16 runs of different sizes, run alone."""
    batcher = Batcher("m", "1", [runner], max_batch_size=64, padding=_sequence_plan())
    for n in range(10, 26):
        batcher.infer({"x": np.ones((rows, n), np.float32)})
    runner.shapes.clear()
    return batcher


def _queue_behind_a_held_run(batcher: Batcher, runner: _Held, requests: list) -> list:
    """Submit `requests` while the runner holds a first request: they queue and batch."""
    runner.gate.clear()
    held = batcher.submit({"x": np.ones((1, 3), np.float32)})
    time.sleep(0.05)
    handles = [batcher.submit(f) for f in requests]
    runner.gate.set()
    held.result(5)
    return handles


def _check_alone(requests, handles) -> None:
    for feeds, handle in zip(requests, handles, strict=True):
        got = handle.result(5)
        for want, answer in zip(_sequence_model(feeds), got, strict=True):
            np.testing.assert_array_equal(answer, want)


def test_batcher_pads_mixed_lengths_when_runs_cost_little_per_element() -> None:
    runner = _Held(cost=lambda elements: 0.005)  # a fixed cost per run: padding is free
    batcher = _learned(runner)
    requests = _requests([5, 2, 9, 9, 1, 7], seed=1)
    handles = _queue_behind_a_held_run(batcher, runner, requests)
    _check_alone(requests, handles)
    assert runner.shapes == [(1, 3), (sum(f["x"].shape[0] for f in requests), 9)]
    batcher.close()


def test_batcher_pads_only_equal_lengths_until_it_knows_the_cost() -> None:
    runner = _Held()
    batcher = Batcher("m", "1", [runner], max_batch_size=64, padding=_sequence_plan())
    requests = _requests([5, 2, 5, 2], seed=2)
    handles = _queue_behind_a_held_run(batcher, runner, requests)
    _check_alone(requests, handles)
    assert runner.shapes == [(1, 3), (2, 5), (4, 2)]
    batcher.close()


def test_batcher_adds_no_padding_that_costs_more_than_a_run() -> None:
    """10 ms a run + 0.5 ms an element: a request joins a batch when the padding it adds is
    under 20 elements."""
    runner = _Held(cost=lambda elements: 0.010 + 0.0005 * elements)
    batcher = _learned(runner)
    assert batcher._cost.overhead_elements() == pytest.approx(20, rel=0.25)
    lengths = [40, 36, 70, 35, 38, 5]  # 36, 35, 38 pad by 4, 5, 2 to 40; 70 and 5 by 30 and 35
    requests = [{"x": np.ones((1, n), np.float32)} for n in lengths]
    handles = _queue_behind_a_held_run(batcher, runner, requests)
    _check_alone(requests, handles)
    assert runner.shapes[1:] == [(4, 40), (1, 70), (1, 5)]
    batcher.close()


def test_buckets_batch_within_a_bucket_only_and_always() -> None:
    """Buckets 8, 32: lengths 2-8 pad together, 9-32 together, above 32 together; before the
    cost model knows anything and however much each run costs per element."""
    runner = _Held(cost=lambda elements: 0.0005 * elements)
    plan = replace(_sequence_plan(), buckets=(8, 32))
    batcher = Batcher("m", "1", [runner], max_batch_size=64, padding=plan)
    lengths = [2, 30, 8, 40, 9, 5, 33]
    requests = [{"x": np.ones((1, n), np.float32)} for n in lengths]
    handles = _queue_behind_a_held_run(batcher, runner, requests)
    _check_alone(requests, handles)
    assert runner.shapes == [(1, 3), (3, 8), (2, 30), (2, 40)]
    batcher.close()


def test_outputs_unlike_the_plan_run_each_request_alone() -> None:
    def fixed(feeds):  # the plan says `doubled` follows the sequence; here it does not
        x = feeds["x"]
        return [np.zeros((x.shape[0], 3), np.float32), np.where(x == -1, 0, x).sum(axis=1)]

    runner = _Held(cost=lambda elements: 0.005, model=fixed)
    batcher = _learned(runner)
    requests = [{"x": np.ones((1, n), np.float32)} for n in (2, 4)]
    handles = _queue_behind_a_held_run(batcher, runner, requests)
    for f, h in zip(requests, handles, strict=True):
        np.testing.assert_array_equal(h.result(5)[1], f["x"].sum(axis=1))
    assert runner.shapes == [(1, 3), (2, 4), (1, 2), (1, 4)]  # the padded run, then each alone
    batcher.close()


# ---------------------------------------------------------------------------------------------
# The load-time decision, on real onnxruntime sessions


def _session(tmp_path, model):
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return runtime.create_session(path, "cpu", 1)


def test_decide_lengths_maps_outputs_to_input_lengths(tmp_path) -> None:
    plan = batch_dims.decide_lengths(_session(tmp_path, builders.masked_sequence()), {})
    assert plan.axes == 1
    assert plan.inputs == {"x": ((1, 0),), "mask": ((1, 0),)}  # scale [N, 1] is not padded
    assert plan.outputs == (((1, 0),), ())  # y follows the sequence; pooled does not
    two = batch_dims.decide_lengths(_session(tmp_path, builders.two_lengths()), {"b": -1.5})
    assert two.axes == 2 and two.values["b"] == np.float32(-1.5)
    assert two.outputs == (((1, 0),), ((1, 1),), ((1, 0), (2, 1)))


def test_decide_lengths_refuses_what_cannot_be_cut_back(tmp_path) -> None:
    with pytest.raises(batch_dims.PaddingRefused, match="output 'y' dimension 1 is 8 .* 14"):
        batch_dims.decide_lengths(_session(tmp_path, builders.doubled_sequence()), {})
    with pytest.raises(batch_dims.PaddingRefused, match="padding changes the answers: output 'y'"):
        batch_dims.decide_lengths(_session(tmp_path, builders.unmasked_mean()), {})
    session = _session(tmp_path, builders.masked_sequence())
    with pytest.raises(batch_dims.PaddingRefused, match="padding changes the answers"):
        batch_dims.decide_lengths(session, {"mask": 1})  # a mask padded with 1 keeps the pads
    with pytest.raises(batch_dims.PaddingRefused, match="no input named; its inputs: x, mask"):
        batch_dims.decide_lengths(session, {"masks": 0})
    with pytest.raises(batch_dims.PaddingRefused, match="padding_value 0.5 is not a INT64"):
        batch_dims.decide_lengths(session, {"mask": 0.5})


def test_config_takes_tf_serving_padding_in_dynamic_batching() -> None:
    config = parse_config(
        {
            "dynamic_batching": {"pad_variable_length_inputs": True},
            "input": [{"name": "mask", "padding_value": 0}, {"name": "ids", "padding_value": 3}],
        }
    )
    assert config.pad_variable_length_inputs
    assert config.padding_values() == {"mask": 0, "ids": 3}
    assert not parse_config({}).pad_variable_length_inputs
    bucketed = {"pad_variable_length_inputs": True, "padding_buckets": [16, 64, 128]}
    assert parse_config(bucketed).padding_buckets == (16, 64, 128)
    nested = parse_config({"dynamic_batching": bucketed})
    assert nested.pad_variable_length_inputs and nested.padding_buckets == (16, 64, 128)
    for raw, message in (
        ({"dynamic_batching": {"pad_variable_length_inputs": 1}}, "must be true or false"),
        ({"dynamic_batching": {"pad": True}}, "keys: max_queue_delay_microseconds, pad_var"),
        ({"input": [{"name": "x", "padding_value": [0]}]}, "padding_value must be a number"),
        ({"output": [{"name": "y", "padding_value": 0}]}, "unknown key(s) padding_value"),
        ({"pad_variable_length_inputs": True, "padding_buckets": [64, 16]}, "ascending"),
        ({"pad_variable_length_inputs": True, "padding_buckets": [0]}, "ascending positive"),
        ({"padding_buckets": [16]}, "set pad_variable_length_inputs to true"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(raw)
        assert message in str(info.value)


# ---------------------------------------------------------------------------------------------
# Through the server: V2 JSON, V2 binary and gRPC at once, mixed lengths, one worker


@pytest.fixture(scope="module")
def padded_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("padding")
    padded = {"max_batch_size": 32, "dynamic_batching": {"pad_variable_length_inputs": True}}
    builders.write_model(root, "masked", builders.masked_sequence(), config=padded)
    # a queue delay: requests wait for a batch to fill, so mixed lengths do share batches
    delayed = {"max_batch_size": 32, "dynamic_batching": {
        "pad_variable_length_inputs": True, "max_queue_delay_microseconds": 5000}}  # fmt: skip
    builders.write_model(
        root, "scaled", builders.masked_sequence(),
        config={**delayed, "input": [{"name": "x", "padding_value": -7.5}]},
    )  # fmt: skip
    bucketed = {**delayed, "padding_buckets": [8, 24]}
    builders.write_model(root, "bucketed", builders.masked_sequence(), config=bucketed)
    builders.write_model(root, "doubled", builders.doubled_sequence(), config=padded)
    builders.write_model(root, "unmasked", builders.unmasked_mean(), config=padded)
    typo = {**padded, "input": [{"name": "msk", "padding_value": 0}]}
    builders.write_model(root, "typo", builders.masked_sequence(), config=typo)
    server = start_server(root, threads=16)
    try:
        yield server, root
    finally:
        server.stop()


def test_models_that_cannot_be_padded_are_refused_with_the_reason(padded_server) -> None:
    server, _ = padded_server
    rows = {r["name"]: r for r in server.post("/v2/repository/index").json()}
    assert rows["masked"]["state"] == "READY" and rows["scaled"]["state"] == "READY"
    assert "cannot be cut back" in rows["doubled"]["reason"]
    assert "padding changes the answers" in rows["unmasked"]["reason"]
    assert "'msk', which the model has no input named" in rows["typo"]["reason"]
    config = server.get("/v2/models/masked/config").json()
    assert config["dynamic_batching"]["pad_variable_length_inputs"] is True
    config = server.get("/v2/models/bucketed/config").json()["dynamic_batching"]
    assert config["pad_variable_length_inputs"] and config["padding_buckets"] == [8, 24]


@pytest.mark.parametrize("model", ["masked", "scaled", "bucketed"])
def test_concurrent_mixed_lengths_each_get_their_own_answer(padded_server, model) -> None:
    server, root = padded_server
    session = ort.InferenceSession(
        str(root / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(3)
    requests = []
    for i in range(48):
        rows, length = 1 + i % 3, 1 + (i * 7) % 40
        mask = np.ones((rows, length), np.int64)
        mask[0, length // 2 + 1 :] = 0  # a request padded by its client, too
        requests.append(
            {
                "x": rng.normal(size=(rows, length, 4)).astype(np.float32),
                "mask": mask,
                "scale": rng.random((rows, 1)).astype(np.float32),
            }
        )
    expected = [dict(zip(("y", "pooled"), session.run(None, f), strict=True)) for f in requests]
    grpc = grpcclient.InferenceServerClient(server.grpc_url)

    def ask(i: int) -> dict[str, np.ndarray]:
        feeds = requests[i]
        kind = i % 3
        if kind == 0:  # V2 JSON
            body = {"inputs": [
                {"name": k, "shape": list(v.shape), "datatype": "INT64" if k == "mask" else "FP32",
                 "data": v.ravel().tolist()} for k, v in feeds.items()]}  # fmt: skip
            response = server.post(f"/v2/models/{model}/infer", json=body)
            assert response.status_code == 200, response.text
            return {
                o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
                for o in response.json()["outputs"]
            }
        client = httpclient if kind == 1 else grpcclient
        items = []
        for k, v in feeds.items():
            item = client.InferInput(k, list(v.shape), "INT64" if k == "mask" else "FP32")
            item.set_data_from_numpy(v)
            items.append(item)
        if kind == 1:  # a client per call: tritonclient.http's clients are not thread-safe
            rest = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
            try:
                result = rest.infer(model, items)
            finally:
                rest.close()
        else:
            result = grpc.infer(model, items)
        return {name: result.as_numpy(name) for name in ("y", "pooled")}

    before = counts(server, model)
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(ask, range(len(requests))))
        for i, (want, got) in enumerate(zip(expected, answers, strict=True)):
            for name in ("y", "pooled"):
                assert got[name].shape == want[name].shape, (i, name)
                np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)
    after = counts(server, model)
    assert after[1] - before[1] == 3 * sum(f["x"].shape[0] for f in requests)
    if model != "masked":  # 33 different lengths a round: unpadded, ~one run per request
        assert after[0] - before[0] < 0.75 * 3 * len(requests)
    grpc.close()
