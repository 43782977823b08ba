"""benchmarks/inference_process.py: the verdict on made-up numbers, and tiny real runs of each
measurement (real onnxruntime processes, real threads, real shared memory)."""

from __future__ import annotations

import pytest

from benchmarks import inference_process as ip
from benchmarks.serving import build_model


def handoffs(thread_us: float, process_us: float, in_flight: int = 32) -> list[ip.Handoff]:
    """Made-up hand-off cells: 1,000 requests each, CPU per request as given."""

    def cell(label: str, us: float, k: int) -> ip.Handoff:
        return ip.Handoff(label, k, 1000, 1.0, us * 1000 / 1e6)

    return [
        cell("thread (_Pending + Condition)", 999.0, 1),  # rows at 1 in flight are not used
        cell("process (shared memory + pipe)", 1.0, 1),
        cell("thread (_Pending + Condition)", thread_us, in_flight),
        cell("tapeserve Batcher (submit/result)", 500.0, in_flight),
        cell("process (shared memory + pipe)", process_us, in_flight),
    ]


def test_verdict_weighs_compute_gain_against_extra_handoff_share() -> None:
    rates = {1: {"a": 1.0, "b": 100.0}, 32: {"a": 1000.0, "b": 1200.0}}  # +20% at batch 32
    win = ip.verdict(rates, handoffs(10.0, 80.0), request_us=700.0)  # +70 us = 10% of 700
    assert win.compute_gain == pytest.approx(0.2)
    assert win.extra_us == pytest.approx(70.0) and win.cost == pytest.approx(0.1)
    assert win.wins and "WINS" in win.line() and "+20.0%" in win.line()
    lose = ip.verdict(rates, handoffs(10.0, 220.0), request_us=700.0)  # 210 us = 30%
    assert not lose.wins and "does NOT win" in lose.line() and "costs less" not in lose.line()
    cheaper = ip.verdict(rates, handoffs(10.0, 4.0), request_us=700.0)
    assert cheaper.extra_us == pytest.approx(-6.0) and "costs less CPU" in cheaper.line()
    # the same extra cost weighs less against a costlier request
    assert ip.verdict(rates, handoffs(10.0, 220.0), request_us=2100.0).wins
    # no compute gain: even a free hand-off does not win
    flat = {32: {"a": 1000.0, "b": 1000.0}}
    assert not ip.verdict(flat, handoffs(10.0, 10.0), request_us=700.0).wins


@pytest.mark.parametrize("measure", ip.HANDOFFS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("in_flight", ip.IN_FLIGHT)
def test_each_handoff_answers_and_counts_requests(measure, in_flight: int) -> None:
    # each measure checks the answer it got back against the same computation done here
    cell = measure(in_flight, 64)
    assert cell.in_flight == in_flight and cell.requests == 64
    assert cell.wall_s > 0 and cell.cpu_s > 0 and cell.per_s > 0


def test_compute_runs_both_layouts(tmp_path) -> None:
    path = tmp_path / "cnn.onnx"
    path.write_bytes(build_model("cnn").SerializeToString())
    rates = ip.compute(path, batches=(2,), samples=8, repeats=1)
    assert set(rates) == {2} and rates[2]["a"] > 0 and rates[2]["b"] > 0


def test_main_writes_the_table_and_verdict(tmp_path) -> None:
    out = tmp_path / "result.md"
    tiny = ["--samples", "8", "--requests", "64", "--repeats", "1", "--handoff-repeats", "1"]
    ip.main([*tiny, "--out", str(out)])
    text = out.read_text()
    for batch in ip.BATCHES:
        assert f"\n| {batch} | " in text
    assert text.count("| process (shared memory + pipe) |") == len(ip.IN_FLIGHT)
    assert "onnxruntime" in text and "One inference process per device" in text
    assert "--request-us 700" in text
