"""SIGTERM under gRPC load loses no call; concurrent calls are batched.

Every call either comes back OK with the right answer, or is refused before it ran: UNAVAILABLE
(the server stopped taking calls, or the port is closed) or CANCELLED (a call gRPC had received
but not yet handed to the server when the drain began; gRPC servers answer such calls so, see
grpc.md section 3). The request id each call carries is matched against the server's access
log: a call the server answered but whose client did not get the answer, or a refused call that
had reached the server, would show. The master exits 0 within
--graceful-timeout. Both worker classes.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from tests.hardening.load import MODEL, WIDTH, wait_for
from tests.serve import builders
from tests.support.server import RunningServer

CLIENTS = 24
GRACE_S = 10


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    # A queue delay keeps requests queued in the batcher at any moment: SIGTERM finds some there.
    config = {"max_batch_size": 32, "max_queue_delay_ms": 20}
    builders.write_model(tmp_path, MODEL, builders.add_mul(), config=config)
    return tmp_path


class Outcomes:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: set[str] = set()
        self.refused: dict[str, str] = {}
        self.lost: dict[str, str] = {}

    def count(self) -> int:
        with self.lock:
            return len(self.ok)


def _client_loop(url: str, worker: int, outcomes: Outcomes, stop: threading.Event) -> None:
    rng = np.random.default_rng(worker)
    client = grpcclient.InferenceServerClient(url)
    n = 0
    while not stop.is_set():
        n += 1
        rid = f"c{worker}-{n}"
        a = rng.normal(size=(1, WIDTH)).astype(np.float32)
        b = rng.normal(size=(1, WIDTH)).astype(np.float32)
        inputs = [grpcclient.InferInput(k, [1, WIDTH], "FP32") for k in ("a", "b")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        try:
            result = client.infer(MODEL, inputs, headers={"x-request-id": rid}, client_timeout=30)
        except InferenceServerException as exc:
            status = exc.status() or ""
            refused = status in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")
            with outcomes.lock:
                if refused:
                    outcomes.refused[rid] = f"{status}: {exc.message()}"
                else:
                    outcomes.lost[rid] = f"{status}: {exc.message()}"
            if refused:
                time.sleep(0.05)  # the server is going: do not spin
            continue
        right = np.allclose(result.as_numpy("sum"), a + b) and np.allclose(
            result.as_numpy("product"), a * b
        )
        with outcomes.lock:
            if right:
                outcomes.ok.add(rid)
            else:
                outcomes.lost[rid] = "wrong answer"
    client.close()


def _answered_by_server(log: str) -> dict[str, int]:
    answered = {}
    for line in log.splitlines():
        if '"path":"/inference.GRPCInferenceService/ModelInfer"' not in line:
            continue
        entry = json.loads(line[line.index("{") :])
        answered[entry["request_id"]] = entry["status"]
    return answered


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["async", "gthread"])
def test_sigterm_under_grpc_load_loses_no_call(tapeserve_server, repository, worker_class):
    srv: RunningServer = tapeserve_server(
        repository,
        workers=2,
        extra_args=["--worker-class", worker_class, "--graceful-timeout", str(GRACE_S)],
    )
    outcomes, stop = Outcomes(), threading.Event()
    threads = [
        threading.Thread(target=_client_loop, args=(srv.grpc_url, i, outcomes, stop))
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: outcomes.count() >= 300, "the load to get going", timeout=60)
        ok_at_term = outcomes.count()
        srv.process.send_signal(signal.SIGTERM)
        sent_term = time.monotonic()
        srv.process.wait(GRACE_S + 10)
        exited_after = time.monotonic() - sent_term
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    answered = _answered_by_server(srv.log())
    assert srv.process.returncode == 0, srv.log()[-3000:]
    # The log says which worker's drain step ran long (its drain lines, a graceful-timeout cut).
    assert exited_after < GRACE_S, (exited_after, srv.log()[-6000:])
    assert not outcomes.lost, dict(list(outcomes.lost.items())[:5])
    assert outcomes.count() > ok_at_term, "calls in flight at SIGTERM were answered"
    server_ok = {rid for rid, status in answered.items() if status == 200}
    assert server_ok == outcomes.ok, "every call the server answered reached its client"
    assert not (set(outcomes.refused) & set(answered)), "a refused call never ran"
    print(
        f"gRPC drain ({worker_class}): {len(outcomes.ok)} OK, {len(outcomes.refused)} refused "
        f"before running, {ok_at_term} OK at SIGTERM, exit after {exited_after:.2f} s"
    )


def test_concurrent_calls_are_batched(tapeserve_server, repository) -> None:
    srv: RunningServer = tapeserve_server(repository)  # one worker: one batcher sees them all
    calls = 256

    async def main() -> None:
        async with aioclient.InferenceServerClient(srv.grpc_url) as client:

            async def one(i: int) -> None:
                x = np.full((1, WIDTH), i, np.float32)
                inputs = [aioclient.InferInput(k, [1, WIDTH], "FP32") for k in ("a", "b")]
                for tensor in inputs:
                    tensor.set_data_from_numpy(x)
                result = await client.infer(MODEL, inputs)
                np.testing.assert_array_equal(result.as_numpy("sum"), x + x)

            for start in range(0, calls, 64):  # 64 in flight at a time
                await asyncio.gather(*(one(i) for i in range(start, start + 64)))

    asyncio.run(main())
    text = srv.metrics()

    def value(name: str) -> float:
        match = re.search(rf'^{name}\{{model="{MODEL}",version="1"\}} (\S+)$', text, re.M)
        return float(match[1]) if match else 0.0

    samples = value("tapeserve_inference_samples_total")
    batches = value("tapeserve_inference_batches_total")
    counted = re.search(
        rf'^tapeserve_requests_total\{{code="200",model="{MODEL}",protocol="grpc",version="1"\}} '
        r"(\S+)$",
        text,
        re.M,
    )
    assert counted and float(counted[1]) == calls
    assert samples >= calls and batches > 0
    assert samples / batches > 2, f"mean batch {samples / batches:.1f}: calls were not batched"
