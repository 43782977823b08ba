"""Variable-length padding on the full BERT: unpadded vs padded (cost model) vs length buckets.

One process, one onnxruntime session (the server's loader, intra-op threads = the machine's
CPUs) behind the server's Batcher, driven by `--clients` threads that each send one sequence
at a time, lengths 16-128 in turn (as benchmarks/zoo.py's BERT rows). The three ways are timed
in interleaved blocks (none, cost, buckets, then reversed, ...), so the machine's load falls on
all of them alike; each block records requests/s, runs, mean batch rows, padded tokens run per
token asked, and the load average. No HTTP: what is measured is what padding changes.

    .venv/bin/python benchmarks/padding.py [--rounds 2] [--block 30] [--clients 16]
        [--buckets 32,64,96,128] [--size full]

Results: benchmarks/results/padding.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modelzoo import bert, build  # noqa: E402
from serve.core.batcher import Batcher  # noqa: E402
from serve.lifecycle import batch_dims, runtime  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
LENGTHS = (16, 32, 48, 64, 80, 96, 112, 128)
MAX_BATCH = 32


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def block(session, plan, feeds, clients: int, seconds: float) -> dict:
    """One timed block of one way: a fresh Batcher (its cost model learns again)."""
    runs: list[tuple[int, int]] = []

    def run(f):
        runs.append(f["input_ids"].shape)
        return session.run(f)

    batcher = Batcher("bert", "1", [run], max_batch_size=MAX_BATCH, padding=plan)
    asked = [0] * clients
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            f = feeds[i % len(feeds)]
            batcher.infer(f)
            asked[k] += f["input_ids"].size
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    batcher.close()
    requests = sum(rows for rows, _ in runs)
    return {
        "rps": requests / wall,
        "runs": len(runs),
        "rows_per_run": requests / max(1, len(runs)),
        "tokens_run_per_asked": sum(r * n for r, n in runs) / max(1, sum(asked)),
        "load": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--block", type=float, default=30.0, help="seconds per timed block")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--buckets", default="32,64,96,128")
    parser.add_argument("--size", default="full", choices=sorted(bert.SIZES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load_start = load_average()
    threads = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="tapeserve-padding-bench-") as scratch:
        member = build("bert_optimized", Path(scratch), size=args.size)
        session = runtime.create_session(member.path, "cpu", threads)
        plan = batch_dims.decide_lengths(session, {})
        buckets = tuple(int(b) for b in args.buckets.split(","))
        ways = {
            "unpadded": None,
            "padded (cost model)": plan,
            f"buckets {args.buckets}": dataclasses.replace(plan, buckets=buckets),
        }
        feeds = [bert.tokens(args.size, 1, n, i) for i, n in enumerate(LENGTHS)]
        for f in feeds:
            session.run(f)
        blocks: dict[str, list[dict]] = {w: [] for w in ways}
        for r in range(args.rounds):
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            for way in order:
                result = block(session, ways[way], feeds, args.clients, args.block)
                blocks[way].append(result)
                print(f"round {r} {way:28s} {result['rps']:6.2f} req/s  runs {result['runs']:4d}"
                      f"  rows/run {result['rows_per_run']:5.2f}  tokens run/asked "
                      f"{result['tokens_run_per_asked']:.2f}  load {result['load']}",
                      flush=True)  # fmt: skip
    base = blocks["unpadded"]
    lines = [
        f"# Variable-length padding, BERT ({args.size} size, optimized), in-process",
        "",
        f"Run at {started} UTC: {args.clients} client threads, one sequence per request, lengths "
        f"{LENGTHS[0]}-{LENGTHS[-1]} in turn; max_batch_size {MAX_BATCH}; onnxruntime intra-op "
        f"threads {threads}; {args.rounds} rounds of interleaved {args.block:g} s blocks. "
        f"Load average at start: {load_start}; at end: {load_average()}.",
        "",
        "| way | req/s per block | vs unpadded (same round) | rows per run | tokens run / asked |",
        "|---|---|---|---|---|",
    ]
    for way, got in blocks.items():
        ratios = [g["rps"] / b["rps"] for g, b in zip(got, base, strict=True)]
        rates = ", ".join(f"{g['rps']:.2f}" for g in got)
        lines.append(
            f"| {way} | {rates} | "
            f"{', '.join(f'{x:.2f}x' for x in ratios)} | "
            f"{statistics.mean(g['rows_per_run'] for g in got):.2f} | "
            f"{statistics.mean(g['tokens_run_per_asked'] for g in got):.2f} |"
        )
    lines += ["", "Load per block: " + "; ".join(
        f"{way} {', '.join(g['load'].split()[0] for g in got)}" for way, got in blocks.items()
    ) + "."]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "padding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
