"""Shared weights vs private copies: CPU per sample of the same model, loaded both ways.

The server's two ways of loading a CPU model (serve.lifecycle.runtime.create_session):
`share_weights` (the default: an optimized copy with pre-packed weights written once into the
runtime folder and memory-mapped by every worker) and `share_weights: false` (each session
reads the model and pre-packs its own copy). Both sessions live in one process, on the same
threads, and are timed in interleaved blocks (shared, private, shared, ...), so the machine's
load falls on both alike; each block records the CPU time of the calling thread per sample (with
intra-op threads 1, onnxruntime computes in the calling thread: the CPU time is exact), the wall
time and the page faults.

    .venv/bin/python benchmarks/shared_weights.py [--models resnet50,bert] [--rounds 6]
        [--block 1.5] [--threads 1] [--workers 1]

`--workers 2` runs the comparison in two processes at once (as two Gunicorn workers on the
machine's two cores), each timing its own sessions. Models under 8 MiB (the zoo's image and
tree models) are never copied (serve.lifecycle.shared_weights.MIN_SHARED_BYTES): both ways load
the same file, so they are not measured here. Results: benchmarks/results/shared_weights.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modelzoo import bert, build, resnet  # noqa: E402
from serve.lifecycle import runtime, shared_weights  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"resnet50": "resnet50", "bert": "bert_optimized"}
#: Batches timed per model: (label, feeds maker).
BATCHES = {
    "resnet50": [("batch 1", {"batch": 1}), ("batch 8", {"batch": 8})],
    "bert": [
        ("batch 1 x 64 tokens", {"batch": 1, "sequence": 64}),
        ("batch 8 x 64 tokens", {"batch": 8, "sequence": 64}),
    ],
}
#: Input makers of the full-size members (the same as their ZooModel.inputs).
INPUTS = {
    "resnet50": lambda batch=1, seed=0: {"input": resnet.images("full", batch, seed)},
    "bert": lambda batch=1, seed=0, sequence=16: bert.tokens("full", batch, sequence, seed),
}


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed_block(session, feeds, seconds: float) -> dict:
    """Run `feeds` for about `seconds`; thread CPU and wall ms per run, minor faults per run."""
    faults0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    cpu0, wall0, runs = time.thread_time(), time.perf_counter(), 0
    while time.perf_counter() - wall0 < seconds or runs < 2:
        session.run(feeds)
        runs += 1
    wall = time.perf_counter() - wall0
    cpu = time.thread_time() - cpu0
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults0
    return {"cpu_ms": 1e3 * cpu / runs, "wall_ms": 1e3 * wall / runs, "faults": faults / runs}


def compare(path: Path, folder: Path, cases, args, out) -> None:
    """Both sessions of one model, interleaved blocks per case; results appended to `out`."""
    shared = runtime.create_session(path, "cpu", args.threads, shared_weights=folder)
    private = runtime.create_session(path, "cpu", args.threads)
    sessions = {"shared": shared, "private": private}
    for label, feeds in cases:
        for s in sessions.values():  # warm: first touch of every page, arena sized
            s.run(feeds)
            s.run(feeds)
        blocks: dict[str, list[dict]] = {k: [] for k in sessions}
        for r in range(args.rounds):
            order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
            for key in order:
                blocks[key].append(timed_block(sessions[key], feeds, args.block))
        out.append({"case": label, "pid": os.getpid(), "blocks": blocks, "load": load_average()})


def worker(member_path: str, folder: str, cases, args, queue) -> None:
    out: list = []
    compare(Path(member_path), Path(folder), cases, args, out)
    queue.put(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=float, default=1.5, help="seconds per timed block")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per session")
    parser.add_argument("--workers", type=int, default=1, help="processes comparing at once")
    parser.add_argument("--zoo", type=Path, help="a folder of built full-size members to reuse")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-shared-bench-"))
    zoo = args.zoo or scratch / "zoo"
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    rows = []
    lines = [
        "# Shared weights vs private copies: CPU per run",
        "",
        f"Run at {started} UTC; intra-op threads {args.threads}, {args.workers} process(es) "
        f"at once, {args.rounds} interleaved blocks of {args.block:g} s per way and case. "
        "CPU: the calling thread's CPU time per run (median of the blocks; onnxruntime "
        "computes in it with 1 intra-op thread); faults: minor page faults per run.",
        "",
        f"Load average at start: {load_average()}.",
        "",
        "| model | case | shared CPU ms | private CPU ms | shared / private | shared wall ms "
        "| private wall ms | faults/run shared | faults/run private | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    try:
        measure(args, zoo, scratch, rows, lines)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lines += ["", f"Load average at end: {load_average()}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shared_weights.json").write_text(
        json.dumps(
            {"started": started, "args": vars(args) | {"zoo": str(zoo), "out": None}, "rows": rows},
            indent=1,
            default=str,
        )  # fmt: skip
    )
    (args.out / "shared_weights.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def measure(args, zoo: Path, scratch: Path, rows: list, lines: list) -> None:
    """Every model's cases, both ways; a row and a table line per case and process."""
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        member_dir = zoo / MODELS[name]
        path = member_dir / "1" / "model.onnx"
        if not path.exists():
            build(MODELS[name], zoo, size="full")
        if shared_weights.model_bytes(path) < shared_weights.MIN_SHARED_BYTES:
            print(f"{name}: under {shared_weights.MIN_SHARED_BYTES} bytes, never copied; skipped")
            continue
        cases = [(label, INPUTS[name](**kw)) for label, kw in BATCHES[name]]
        folder = scratch / "weights"
        results: list = []
        if args.workers == 1:
            compare(path, folder, cases, args, results)
        else:
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            procs = [
                ctx.Process(target=worker, args=(str(path), str(folder), cases, args, queue))
                for _ in range(args.workers)
            ]
            for p in procs:
                p.start()
            for _ in procs:
                results.extend(queue.get())
            for p in procs:
                p.join()
        for res in results:
            med = {
                way: {k: statistics.median(b[k] for b in blocks) for k in blocks[0]}
                for way, blocks in res["blocks"].items()
            }
            row = {"model": name, **res, "median": med}
            rows.append(row)
            s, p = med["shared"], med["private"]
            line = (
                f"| {name} | {res['case']} | {s['cpu_ms']:.1f} | {p['cpu_ms']:.1f} | "
                f"{s['cpu_ms'] / p['cpu_ms']:.3f} | {s['wall_ms']:.1f} | {p['wall_ms']:.1f} | "
                f"{s['faults']:.1f} | {p['faults']:.1f} | {res['load']} |"
            )
            lines.append(line)
            print(line, flush=True)


if __name__ == "__main__":
    main()
