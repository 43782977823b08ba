"""The helpers of benchmarks/serving.py: models, bodies, answer checks, wrk parsing, the table."""

from __future__ import annotations

import json
import os
from argparse import Namespace

import numpy as np
import onnxruntime as ort
import pytest
import requests

from benchmarks import serving
from tests.support.system import require_tool


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_models_are_seeded_and_run(name: str, tmp_path) -> None:
    model = serving.build_model(name)
    assert model.SerializeToString() == serving.build_model(name).SerializeToString()
    assert model.SerializeToString() != serving.build_model(name, seed=7).SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.concatenate([serving.sample(name)] * 3)
    (y,) = session.run(None, {"x": x})
    assert y.shape == (3, 10) and np.isfinite(y).all() and np.ptp(y[0]) > 0
    raw = serving.raw_ort(path, name, seconds=0.02, repeats=1)
    assert set(raw) == set(serving.RAW_BATCHES) and all(
        v["samples_per_s"] > 0 for v in raw.values()
    )


def test_v2_outputs_reads_json_and_binary_answers() -> None:
    y = np.arange(10, dtype=np.float32).reshape(1, 10)
    out = {"name": "y", "shape": [1, 10], "datatype": "FP32"}
    as_json = json.dumps({"outputs": [{**out, "data": y.ravel().tolist()}]}).encode()
    np.testing.assert_array_equal(serving.v2_outputs(as_json, {}), y)
    head = json.dumps({"outputs": [{**out, "parameters": {"binary_data_size": 40}}]}).encode()
    length = {"inference-header-content-length": str(len(head))}
    np.testing.assert_array_equal(serving.v2_outputs(head + y.tobytes(), length), y)


def test_parse_wrk_sums_errors() -> None:
    line = (
        'WRKJSON {"requests":10,"rps":5.0,"p50_ms":1.0,"p99_ms":2.0,"err_connect":1,'
        '"err_read":0,"err_write":0,"err_status":2,"err_timeout":0}'
    )
    assert serving.parse_wrk(f"noise\n{line}\n")["errors"] == 3
    with pytest.raises(RuntimeError, match="no result"):
        serving.parse_wrk("Running 1s test")


def test_memory_of_own_process_tree() -> None:
    assert os.getpid() in serving.process_tree(os.getpid())
    rss, pss = serving.memory_kb([os.getpid()])
    assert rss > 10_000 and 0 < pss <= rss


def _row(label: str, c: int, rps: float, p50: float = 1.0, body_bytes: int = 100) -> dict:
    return {
        "server": label.split()[0],
        "label": label,
        "model": "cnn",
        "connections": c,
        "body_bytes": body_bytes,
        "check": "ok",
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": 2 * p50,
        "errors": 0,
        "requests": 1,
        "peak_rss_mb": 1.0,
        "peak_pss_mb": 1.0,
    }


def test_targets_and_table_from_rows() -> None:
    rows = [
        _row("flask sync 2w", 64, 500),
        _row("flask gthread 1x8", 64, 600),
        _row("flask gthread 1x8", 1, 500, p50=2.0),
        _row("tapeserve JSON batch", 1, 400, p50=2.1),
        _row("tapeserve JSON batch", 64, 2400),
        _row("tapeserve binary batch", 64, 3000),
        _row("floor WSGI gthread binary body", 64, 4000),
    ]
    raw = {"cnn": {1: {"samples_per_s": 9000.0, "ms_per_call": 0.1}}}
    got = {t: (m, ok) for t, m, _, ok in serving.targets(rows, raw)}
    assert got["cnn JSON c=64 vs best Flask app"] == ("4.00x", True)
    assert got["cnn binary vs JSON c=64"] == ("1.25x", False)
    assert got["cnn c=1 p50 vs best Flask app"] == ("1.05x", True)
    assert got["cnn binary c=64 vs min(raw ORT best, fastest floor)"] == (
        "75% of floor WSGI gthread binary body (4,000/s, fastest floor)",
        True,
    )
    raw_full = {"cnn": {b: {"samples_per_s": 1.0, "ms_per_call": 1.0} for b in serving.RAW_BATCHES}}
    info = {"started": "now", "settings": "s", "versions": {"python": "3"}}
    text = serving.markdown(rows, raw_full, info, [1, 64])
    assert (
        "| tapeserve JSON batch | 100 B | 400 (2.1 / 4.2) [0.80x] | 2,400 (1.0 / 2.0) [4.00x] |"
        in text
    )
    assert "| cnn binary vs JSON c=64 | 1.25x | >= 1.5x | NO |" in text


@pytest.mark.parametrize(
    ("name", "app", "threads", "worker_class"),
    [
        ("floor", "floor_app:app", 2, "gthread"),
        ("floor asgi", "floor_asgi:app", None, serving.UVICORN_WORKER),
    ],
)
def test_floor_server_under_wrk_and_answer_check(tmp_path, name, app, threads, worker_class):
    require_tool("wrk")
    x = serving.sample("cnn")
    floor_case = serving.cases_for("cnn", x)[name][1]  # the binary body
    with serving.gunicorn(
        app,
        workers=1,
        threads=threads,
        worker_class=worker_class,
        env={},
        scratch=tmp_path,
        health="/",
    ) as server:
        assert serving.check_case(server.url, floor_case, np.zeros((1, 10))) == "fixed body"
        args = Namespace(warmup=1, duration=1)
        rows = serving.drive([(server, [floor_case])], {"cnn": None}, [2], args, tmp_path, print)
    (row,) = rows
    assert row["requests"] > 0 and row["errors"] == 0 and row["peak_rss_mb"] > 0


BIN = 3300  # the binary body's size; the JSON body is larger


def _floor_rows(wsgi: float, asgi: float) -> list[dict]:
    return [
        _row("floor WSGI gthread JSON body", 64, 50_000, body_bytes=15_000),
        _row("floor WSGI gthread binary body", 64, wsgi, body_bytes=BIN),
        _row("floor WSGI gthread binary body", 8, 90_000, body_bytes=BIN),
        _row("floor ASGI JSON body", 64, 60_000, body_bytes=15_000),
        _row("floor ASGI binary body", 64, asgi, body_bytes=BIN),
        _row("tapeserve binary batch", 64, 3000, body_bytes=BIN),
    ]


@pytest.mark.parametrize(
    ("wsgi", "asgi", "fastest"), [(2000, 10_000, "ASGI"), (6000, 5000, "WSGI")]
)
def test_binary_target_uses_the_fastest_floor_at_the_same_body(wsgi, asgi, fastest) -> None:
    rows = _floor_rows(wsgi, asgi)
    floor = serving.fastest_floor(rows, "cnn", BIN)
    assert floor["label"].startswith(f"floor {fastest}") and floor["rps"] == max(wsgi, asgi)
    assert floor["connections"] == 64 and floor["body_bytes"] == BIN  # not the faster JSON/c=8
    raw = {"cnn": {128: {"samples_per_s": 50_000.0, "ms_per_call": 2.5}}}
    ((measured, ok),) = [
        (m, ok) for t, m, _, ok in serving.targets(rows, raw) if "fastest floor" in t
    ]
    limit = max(wsgi, asgi)
    assert measured == f"{3000 / limit:.0%} of {floor['label']} ({limit:,.0f}/s, fastest floor)"
    assert ok is (3000 / limit >= 0.6)


def test_binary_target_falls_back_to_raw_ort_and_still_names_the_floor() -> None:
    rows = _floor_rows(2000, 10_000)
    raw = {"cnn": {1: {"samples_per_s": 4000.0, "ms_per_call": 0.25}}}
    ((measured, ok),) = [
        (m, ok) for t, m, _, ok in serving.targets(rows, raw) if "fastest floor" in t
    ]
    assert measured == (
        "75% of raw ORT best (4,000/s); fastest floor: floor ASGI binary body, 10,000 req/s"
    )
    assert ok
    no_floor = [r for r in rows if not r["label"].startswith("floor ")]
    assert serving.fastest_floor(no_floor, "cnn", BIN) is None
    ((measured, _),) = [
        (m, ok) for t, m, _, ok in serving.targets(no_floor, raw) if "fastest floor" in t
    ]
    assert measured.endswith("fastest floor: none measured")


def test_every_server_has_cases_and_rows_name_the_worker() -> None:
    cases = serving.cases_for("cnn", serving.sample("cnn"))
    assert tuple(cases) == serving.SERVERS
    labels = {server: [c.label for c in group] for server, group in cases.items()}
    assert labels["floor"] == ["floor WSGI gthread JSON body", "floor WSGI gthread binary body"]
    assert labels["floor asgi"] == ["floor ASGI JSON body", "floor ASGI binary body"]
    assert labels["tapeserve gthread"] == [
        "tapeserve gthread JSON batch",
        "tapeserve gthread binary batch",
    ]
    assert all(c.server == server for server, group in cases.items() for c in group)
    floor_bin = [c for c in cases["floor"] + cases["floor asgi"] if "binary" in c.label]
    tape_bin = [c for c in cases["tapeserve"] + cases["tapeserve gthread"] if "binary" in c.label]
    assert {len(c.body) for c in floor_bin + tape_bin} == {len(floor_bin[0].body)}


def test_grpc_rows_are_checked_and_driven_by_h2load(tmp_path) -> None:
    """The gRPC case of a tapeserve server: its answer checked against onnxruntime, then h2load
    posting the framed request; every call it counted was a gRPC success on the server."""
    require_tool("h2load")
    import onnx

    model = tmp_path / "cnn.onnx"
    onnx.save(serving.build_model("cnn"), model)
    serving.write_repository(tmp_path / "repo", {"cnn": model}, 64)
    x = serving.sample("cnn")
    expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    (case,) = [
        c for c in serving.cases_for("cnn", x)["tapeserve"] if c.label.endswith("gRPC batch")
    ]
    with serving.tapeserve(tmp_path / "repo", workers=1, threads=4) as server:
        check = serving.check_case(server.url, case, expected, server.grpc_url)
        assert check == "matches onnxruntime"
        args = Namespace(warmup=1, duration=1)
        (row,) = serving.drive([(server, [case])], {"cnn": expected}, [2], args, tmp_path, print)
        text = requests.get(server.url + "/metrics", timeout=10).text
    assert row["requests"] > 0 and row["errors"] == 0 and row["p50_ms"] > 0
    ok = [line for line in text.splitlines() if line.startswith("tapeserve_requests_total")
          and 'protocol="grpc"' in line and 'code="200"' in line]  # fmt: skip
    assert ok and float(ok[0].rsplit(" ", 1)[1]) >= row["requests"]
    assert not [line for line in text.splitlines() if line.startswith("tapeserve_requests_total")
                and 'protocol="grpc"' in line and 'code="200"' not in line]  # fmt: skip
