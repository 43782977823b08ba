"""One inference process per device fed over shared memory, against per-worker batching.

tapeserve runs N Gunicorn workers, each with its own onnxruntime session (intra-op threads =
cores / workers) and its own batcher, and hands each request from the thread that received it
to the thread that runs its batch. The alternative is one inference process per device that
all HTTP workers feed through shared memory: it forms batches N times larger on one session
with all the cores, but every request crosses a process boundary twice. This measures both
sides on this machine, in one run, for the benchmark CNN ([N,1,28,28] float32):

1. compute: onnxruntime samples/s of (a) two processes, one session at intra-op 1 each, both
   running batches of B at once (per-worker batching with 2 workers), against (b) one process,
   one session at intra-op 2, running batches of 2B (what one inference process forms from the
   same load); repeats alternate a and b and the best is reported (other work on a shared
   machine only ever slows a run down, and a session at intra-op 2 suffers most from it);
2. hand-off: round trips of one request (3,136 B in, 40 B out) to an inference process and
   back - the input written into a multiprocessing.shared_memory slot, the slot number sent
   down a pipe, the answer written into shared memory and its slot number sent back - one at a
   time and 32 in flight (one notification for all 32 each way), against the in-process
   hand-off tapeserve does today (a `serve.core.batcher._Pending` queued under a Condition for
   another thread, woken by its lock) and the whole `serve.core.batcher.Batcher` (submit/result,
   metrics included), measured the same way. CPU per request counts both sides (both threads,
   or both processes), the best of the repeats; the "computation" is the same small numpy step
   everywhere and every path's answer is checked;
3. a verdict: the design can win only if the compute gain at the batch tapeserve forms under
   load (~32 per worker at 64 connections) exceeds the extra hand-off CPU per request as a
   share of the whole per-request CPU (`--request-us`).

    .venv/bin/python benchmarks/inference_process.py [--request-us 700] [--repeats 5]

Writes `benchmarks/results/inference_process.md` and prints it. About a minute on 2 cores.
Linux only (fork, pipes).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serve.core.batcher import Batcher, _Pending  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (1, 28, 28)  # the benchmark CNN's input row: 784 float32 = 3,136 bytes
ROW = int(np.prod(SHAPE))
ANSWER = 10  # float32 outputs per request: 40 bytes
BATCHES = (1, 8, 32)
LOAD_BATCH = 32  # what each worker's batcher forms at 64 connections with 2 workers
IN_FLIGHT = (1, 32)
MARK, STOP = 255, 254  # control messages on the request pipe (slot numbers are below)
_CTX = mp.get_context("fork")

# ---------------------------------------------------------------------------------------------
# Compute: two sessions at intra-op 1 against one at intra-op 2


def session(path: Path, intra_op: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compute_child(path: Path, intra_op: int, batch: int, runs: int, barrier, results) -> None:
    """Warm up, wait for the others, then time `runs` runs of one batch."""
    sess = session(path, intra_op)
    feed = {"x": np.random.default_rng(0).random((batch, *SHAPE), dtype=np.float32)}
    for _ in range(3):
        sess.run(None, feed)
    barrier.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    for _ in range(runs):
        sess.run(None, feed)
    results.put((start, time.perf_counter(), runs * batch))


def concurrent_rate(path: Path, processes: int, intra_op: int, batch: int, runs: int) -> float:
    """Samples/s of `processes` processes each running `runs` batches at once (wall time from
    the first start to the last finish)."""
    barrier, results = _CTX.Barrier(processes), _CTX.SimpleQueue()
    children = [
        _CTX.Process(target=_compute_child, args=(path, intra_op, batch, runs, barrier, results))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    spans = [results.get() for _ in children]
    for child in children:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"compute process exited with {child.exitcode}")
    wall = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
    return sum(samples for _, _, samples in spans) / wall


def compute(path: Path, batches=BATCHES, samples: int = 4096, repeats: int = 5) -> dict:
    """Per worker batch B: samples/s of (a) 2 x intra-op 1 at B and (b) 1 x intra-op 2 at 2B,
    the same number of samples each, repeats alternating a and b; the best and the range."""
    out = {}
    for batch in batches:
        runs = max(2, samples // (2 * batch))
        a, b = [], []
        for _ in range(repeats):
            a.append(concurrent_rate(path, 2, 1, batch, runs))
            b.append(concurrent_rate(path, 1, 2, 2 * batch, runs))
        out[batch] = {
            "a": max(a),
            "b": max(b),
            "a_range": (min(a), max(a)),
            "b_range": (min(b), max(b)),
        }
    return out


# ---------------------------------------------------------------------------------------------
# Hand-off: a request to another thread or process and its answer back


def answer(x: np.ndarray) -> np.ndarray:
    """The stand-in for inference on every path: read the input (a copy, as batching does)
    and derive 10 float32 from it."""
    return x.ravel().copy()[: ANSWER * 78].reshape(ANSWER, 78).sum(axis=1)


@dataclass
class Handoff:
    label: str
    in_flight: int
    requests: int
    wall_s: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def wall_us(self) -> float:
        return self.wall_s / self.requests * 1e6

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.requests * 1e6


def _timed(
    label: str,
    in_flight: int,
    rounds: int,
    one_round: Callable[[], np.ndarray],
    x: np.ndarray,
    mark: Callable[[], object] = lambda: None,
) -> Handoff:
    """Warm up, check the answer, then time `rounds` rounds of `in_flight` requests (wall and
    process CPU). `one_round` returns the last answer of its round; `mark` runs just before
    and just after the timed rounds."""
    for _ in range(min(rounds, 200)):
        got = one_round()
    np.testing.assert_allclose(got.ravel(), answer(x), rtol=1e-5, err_msg=label)
    mark()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        one_round()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    mark()
    return Handoff(label, in_flight, rounds * in_flight, wall, cpu)


def thread_handoff(in_flight: int, requests: int) -> Handoff:
    """Requests queued as `_Pending` under a Condition for a worker thread that takes all that
    is queued, answers each and releases its lock (one notify per round)."""
    queue: collections.deque = collections.deque()
    cond = threading.Condition()

    def worker() -> None:
        while True:
            with cond:
                while not queue:
                    cond.wait()
                batch = list(queue)
                queue.clear()
            for pending in batch:
                if pending is None:
                    return
                pending.set_result([answer(pending.feeds["x"])])

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    x = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)
    key = (("x", SHAPE, x.dtype.str),)

    def one_round() -> np.ndarray:
        pendings = [_Pending({"x": x}, 1, key, None, True) for _ in range(in_flight)]
        with cond:
            queue.extend(pendings)
            cond.notify()
        return [pending.result()[0].copy() for pending in pendings][-1]

    try:
        label = "thread (_Pending + Condition)"
        return _timed(label, in_flight, requests // in_flight, one_round, x)
    finally:
        with cond:
            queue.append(None)
            cond.notify()
        thread.join()


def batcher_handoff(in_flight: int, requests: int) -> Handoff:
    """The same through tapeserve's Batcher: submit() queues, its runner thread batches, runs
    and splits, result() waits (metrics and all)."""

    def runner(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["x"]  # already a copy when batched (concatenated)
        return [x.reshape(len(x), -1)[:, : ANSWER * 78].reshape(-1, ANSWER, 78).sum(axis=2)]

    batcher = Batcher("inference_process", "1", [runner], max_batch_size=64)
    x = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)

    def one_round() -> np.ndarray:
        pendings = [batcher.submit({"x": x}) for _ in range(in_flight)]
        return [pending.result()[0].copy() for pending in pendings][-1]

    try:
        label = "tapeserve Batcher (submit/result)"
        return _timed(label, in_flight, requests // in_flight, one_round, x)
    finally:
        batcher.close()


class SlotArea:
    """`slots` request slots in one shared-memory block: inputs, then answers."""

    def __init__(self, slots: int, shm: shared_memory.SharedMemory | None = None) -> None:
        self.owner = shm is None
        self.shm = shm or shared_memory.SharedMemory(create=True, size=slots * (ROW + ANSWER) * 4)
        self.inputs = np.ndarray((slots, ROW), np.float32, self.shm.buf)
        self.outputs = np.ndarray((slots, ANSWER), np.float32, self.shm.buf, offset=slots * ROW * 4)

    def close(self) -> None:
        del self.inputs, self.outputs  # views must go before the block can close
        self.shm.close()
        if self.owner:
            self.shm.unlink()


def _inference_loop(area: SlotArea, requests: int, answers: int, report) -> None:
    """The inference process: read slot numbers, answer each slot, send its number back (one
    write per read); MARK echoes and notes this process's CPU time, STOP ends."""
    marks = []
    while True:
        ids = os.read(requests, 4096)
        done = bytearray()
        for slot in ids:
            if slot == STOP:
                report.send(marks)
                return
            if slot == MARK:
                marks.append(time.process_time())
            else:
                area.outputs[slot] = answer(area.inputs[slot])
            done.append(slot)
        os.write(answers, done)


def shm_handoff(in_flight: int, requests: int) -> Handoff:
    """This process as the HTTP worker, a forked one as the inference process: inputs written
    into shared-memory slots, slot numbers sent down a pipe (one write for all in flight),
    answers read back from shared memory once their numbers come back up the other pipe."""
    area = SlotArea(in_flight)
    req_r, req_w = os.pipe()
    ans_r, ans_w = os.pipe()
    report_r, report_w = _CTX.Pipe(duplex=False)
    child = _CTX.Process(target=_inference_loop, args=(area, req_r, ans_w, report_w))
    child.start()
    x = np.random.default_rng(0).random((1, *SHAPE), dtype=np.float32)
    slots = bytes(range(in_flight))

    def one_round() -> np.ndarray:
        for slot in range(in_flight):
            area.inputs[slot] = x.ravel()
        os.write(req_w, slots)
        got = 0
        while got < in_flight:
            got += len(os.read(ans_r, 4096))
        return [area.outputs[slot].copy() for slot in range(in_flight)][-1]

    def mark() -> None:
        os.write(req_w, bytes([MARK]))
        os.read(ans_r, 1)

    try:
        label = "process (shared memory + pipe)"
        result = _timed(label, in_flight, requests // in_flight, one_round, x, mark)
        os.write(req_w, bytes([STOP]))
        first, last = report_r.recv()
        result.cpu_s += last - first  # the inference process's share
        return result
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
        for fd in (req_r, req_w, ans_r, ans_w):
            os.close(fd)
        area.close()


HANDOFFS = (thread_handoff, batcher_handoff, shm_handoff)


def handoffs(requests: int = 20000, repeats: int = 3) -> list[Handoff]:
    """Every hand-off at 1 and 32 in flight, repeats interleaved; the best (least CPU)."""
    runs: dict[tuple, list[Handoff]] = collections.defaultdict(list)
    for _ in range(repeats):
        for in_flight in IN_FLIGHT:
            for measure in HANDOFFS:
                runs[(measure.__name__, in_flight)].append(measure(in_flight, requests))
    out = []
    for in_flight in IN_FLIGHT:
        for measure in HANDOFFS:
            out.append(min(runs[(measure.__name__, in_flight)], key=lambda h: h.cpu_s))
    return out


# ---------------------------------------------------------------------------------------------
# Verdict and table


@dataclass
class Verdict:
    compute_gain: float  # b/a - 1 at the load batch
    extra_us: float  # shared-memory hand-off CPU minus thread hand-off CPU, per request
    request_us: float
    load_batch: int

    @property
    def cost(self) -> float:
        return self.extra_us / self.request_us

    @property
    def wins(self) -> bool:
        return self.compute_gain > self.cost

    def line(self) -> str:
        outcome = "WINS" if self.wins else "does NOT win"
        sign = ">" if self.wins else "<="
        cheaper = (
            " (the shared-memory hand-off costs less CPU than the thread hand-off it replaces)"
            if self.extra_us < 0
            else ""
        )
        return (
            f"One inference process per device {outcome} here: compute gain at batch "
            f"{self.load_batch} per worker {self.compute_gain:+.1%} {sign} extra hand-off CPU "
            f"{self.extra_us:+.1f} us per request = {self.cost:+.1%} of {self.request_us:g} us "
            f"per request{cheaper}."
        )


def verdict(
    rates: dict, handoff: list[Handoff], request_us: float, load_batch: int = LOAD_BATCH
) -> Verdict:
    """Compute gain (b/a - 1) at `load_batch` against the extra CPU per request of the
    shared-memory hand-off over the thread hand-off, both at the most requests in flight."""
    top = max(h.in_flight for h in handoff)
    cpu = {h.label.split(" ")[0]: h.cpu_us for h in handoff if h.in_flight == top}
    gain = rates[load_batch]["b"] / rates[load_batch]["a"] - 1
    return Verdict(gain, cpu["process"] - cpu["thread"], request_us, load_batch)


def machine() -> dict:
    info = {
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "load": os.getloadavg()[0],
    }
    return info


def _span(bounds: tuple[float, float] | None) -> str:
    return "-" if bounds is None else f"{bounds[0]:,.0f}-{bounds[1]:,.0f}"


def markdown(
    rates: dict, handoff: list[Handoff], result: Verdict, info: dict, settings: str
) -> str:
    lines = [
        "# One inference process per device vs per-worker batching (cnn)",
        "",
        f"Run at {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {settings}.",
        "",
        f"Machine: {info['cpus']} CPUs ({info['affinity']} usable), {info['cpu']}; Python "
        f"{info['python']}, onnxruntime {info['onnxruntime']}, numpy {info['numpy']}; 1-minute "
        f"load average {info['load']:.2f} when the run began (the machine is shared).",
        "",
        "## Compute: onnxruntime samples/s, cnn [N,1,28,28] float32 (best, range of the repeats)",
        "",
        "| batch per worker B | (a) 2 processes x intra-op 1, batch B each | "
        "(b) 1 process x intra-op 2, batch 2B | b/a |",
        "|---|---|---|---|",
    ]
    for batch, r in rates.items():
        a, b = (f"{r[k]:,.0f} ({_span(r.get(k + '_range'))})" for k in ("a", "b"))
        lines.append(f"| {batch} | {a} | {b} | {r['b'] / r['a']:.2f}x |")
    lines += [
        "",
        "## Hand-off: a request (3,136 B in, 40 B out) to another thread or process and back",
        "",
        "| hand-off | in flight | round trips/s | wall us/request | CPU us/request (both sides) "
        "| CPU vs thread |",
        "|---|---|---|---|---|---|",
    ]
    base = {h.in_flight: h.cpu_us for h in handoff if h.label.startswith("thread")}
    for h in handoff:
        lines.append(
            f"| {h.label} | {h.in_flight} | {h.per_s:,.0f} | {h.wall_us:.1f} | {h.cpu_us:.1f} "
            f"| {h.cpu_us / base[h.in_flight]:.2f}x |"
        )
    lines += ["", "## Verdict", "", result.line(), ""]
    lines.append(
        "The compute gain is an upper bound on the throughput gain (it applies to the compute "
        "share of a request only); the hand-off cost is what crossing the process boundary "
        "adds to every request at 32 in flight, beside the thread hand-off it replaces. The "
        "shared-memory row is the bare mechanism: a real inference process would also watch one "
        "pipe per HTTP worker and each worker's event loop would wake on its answer pipe (the "
        "thread rows likewise leave out today's event-loop wake-up, one per burst of answers)."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--request-us", type=float, default=700.0,
        help="CPU per request of the server today, microseconds (the verdict's denominator)",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=4096, help="samples per compute cell")
    parser.add_argument("--requests", type=int, default=20000, help="requests per hand-off cell")
    parser.add_argument("--repeats", type=int, default=5, help="compute repeats")
    parser.add_argument("--handoff-repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "inference_process.md")
    args = parser.parse_args(argv)
    from benchmarks.serving import build_model

    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cnn.onnx"
        path.write_bytes(build_model("cnn").SerializeToString())
        rates = compute(path, samples=args.samples, repeats=args.repeats)
    handoff = handoffs(args.requests, args.handoff_repeats)
    result = verdict(rates, handoff, args.request_us)
    settings = (
        f"{args.samples} samples per compute cell, {args.requests} requests per hand-off cell, "
        f"best of {args.repeats} (compute) and {args.handoff_repeats} (hand-off) interleaved "
        f"repeats, --request-us {args.request_us:g}"
    )
    text = markdown(rates, handoff, result, info, settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
