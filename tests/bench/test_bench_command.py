"""`tapeserve bench` against a real tapeserve server (Gunicorn, onnxruntime) on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from loadgen import http as bench
from serve.cli import main
from serve.protocol import v2
from tests.serve.builders import mlp, write_model
from tests.support.server import start_server
from tests.support.system import require_module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "mlp", mlp((16, 8, 4)), config={"max_batch_size": 8})
    running = start_server(repo, threads=4)
    yield running
    running.stop()


def run_bench(*args: str):
    return CliRunner().invoke(main, ["bench", *args, "--no-progress"], catch_exceptions=False)


@pytest.mark.parametrize("protocol", ["--json", "--binary"])
def test_sweep_writes_json_and_plot(server, tmp_path: Path, protocol: str) -> None:
    require_module("matplotlib")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run_bench(
        "mlp",
        "--url",
        server.url,
        "-c",
        "1,3",
        "-d",
        "0.6",
        "--warmup",
        "0.2",
        protocol,
        "--json-out",
        str(out),
        "--plot",
        str(png),
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["protocol"] == protocol[2:]
    assert doc["settings"]["inputs"] == {"x": {"shape": [1, 16], "dtype": "float32"}}
    levels = doc["results"]
    assert [level["concurrency"] for level in levels] == [1, 3]
    for level in levels:
        assert level["requests"] > 0 and level["errors"] == 0
        lat = level["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert level["throughput"] == pytest.approx(level["requests"] / level["duration_s"], 0.01)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 3 |" in result.stdout  # the markdown table on stdout


def test_sample_file_and_batch(server, tmp_path: Path) -> None:
    sample = tmp_path / "x.npy"
    np.save(sample, np.ones((2, 16), np.float32))
    body = tmp_path / "body.bin"
    result = run_bench(
        "mlp",
        "--url",
        server.url,
        "-c",
        "2",
        "-d",
        "0.3",
        "--warmup",
        "0",
        "--input-file",
        str(sample),
        "--save-body",
        str(body),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(body.read_bytes())["inputs"][0]["shape"] == [2, 16]


def test_bad_sample_is_reported(server, tmp_path: Path) -> None:
    sample = tmp_path / "x.npy"
    np.save(sample, np.ones((1, 5), np.float32))
    result = run_bench("mlp", "--url", server.url, "-d", "0.3", "--input-file", str(sample))
    assert result.exit_code != 0
    assert "answered 400" in result.output


def test_unknown_model_and_bad_options(server) -> None:
    result = run_bench("nope", "--url", server.url, "-d", "0.3")
    assert result.exit_code != 0 and "answered 404" in result.output
    result = run_bench("mlp", "--url", server.url, "-c", "1,x")
    assert result.exit_code == 2 and "--concurrency" in result.output
    result = run_bench("mlp", "--url", "ftp://h")
    assert result.exit_code != 0 and "http://host:port" in result.output


def test_inputs_from_metadata_fill_batch_and_refuse_free_dims() -> None:
    meta = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "b", "datatype": "INT64", "shape": [-1]},
            {"name": "c", "datatype": "BOOL", "shape": [2]},
        ]
    }
    arrays = bench.inputs_from_metadata(meta, batch_size=4)
    assert arrays["a"].shape == (4, 3) and arrays["a"].dtype == np.float32
    assert arrays["b"].shape == (4,) and arrays["b"].dtype == np.int64
    assert arrays["c"].dtype == bool
    with pytest.raises(ValueError, match="--input-file"):
        bench.inputs_from_metadata(
            {"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, -1]}]}
        )


@pytest.mark.parametrize("binary_data", [False, True])
def test_encoded_request_decodes_to_the_same_tensors(binary_data: bool) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, headers = bench.encode_request({"x": x}, binary_data)
    request = v2.decode_infer(body, headers.get("Inference-Header-Content-Length"))
    (decoded,) = request.inputs
    np.testing.assert_array_equal(np.asarray(decoded.data).reshape(decoded.shape), x)
    assert request.binary_output is binary_data


def test_summarize_percentiles() -> None:
    result = bench.summarize(4, 2.0, [i / 1000 for i in range(1, 101)], errors=1, first_error="x")
    assert result.requests == 100 and result.throughput == 50.0 and result.errors == 1
    assert result.latency_ms["p50"] == pytest.approx(50.5)
    assert result.latency_ms["p99"] == pytest.approx(99.01)
    assert result.latency_ms["max"] == 100.0
    assert "| 4 | 50.0 | 50.50 |" in bench.format_table([result])


def test_grpc_protocol_sweeps_the_grpc_service(server, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    before = _grpc_requests(server)
    result = run_bench(
        "mlp", "--protocol", "grpc", "--url", server.grpc_url, "-c", "1,4", "-d", "0.6",
        "--warmup", "0.2", "-b", "2", "--json-out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["settings"]["protocol"] == "grpc"
    assert doc["settings"]["inputs"] == {"x": {"shape": [2, 16], "dtype": "float32"}}
    levels = doc["results"]
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["requests"] > 0 and level["errors"] == 0
    assert _grpc_requests(server) - before >= sum(level["requests"] for level in levels)


def test_grpc_protocol_reports_a_failing_model(server) -> None:
    result = run_bench("nope", "--protocol", "grpc", "--url", server.grpc_url, "-d", "0.2")
    assert result.exit_code != 0
    assert "NOT_FOUND" in result.output and "served models: mlp" in result.output


def _grpc_requests(server) -> float:
    for line in server.metrics().splitlines():
        if line.startswith('tapeserve_requests_total{code="200",model="mlp",protocol="grpc"'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_server_slower_than_the_window_gets_a_figure_not_zero() -> None:
    """The measured window lasts until one request is answered: on a loaded machine a short
    window can close before the first answer, which read as 0 requests/s."""
    import http.server
    import threading
    import time

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(0.5)  # the server's answer comes after the 0.1 s window
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = bench.Target("127.0.0.1", server.server_address[1], "")
        level = bench.run_level(target, "/v2/models/m/infer", b"{}", {}, 2, 0.1, 0.0, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert level.errors == 0 and level.requests >= 1, level
    assert level.duration_s >= 0.5 and level.throughput == pytest.approx(
        level.requests / level.duration_s, 0.01
    )
