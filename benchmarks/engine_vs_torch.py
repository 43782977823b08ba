"""Time per training step: the engine against PyTorch CPU, same model, weights, batch, threads.

Each step is zero_grad, forward, cross-entropy, backward and an SGD (momentum 0.9) update, in
float32 at batch 128, for an MLP 784-512-512-10 and a small CNN on 1x28x28 input
(conv32-pool-conv64-pool-128-10). Both sides run at the same thread count: torch through
torch.set_num_threads, numpy's BLAS (and any OpenMP pool) through threadpoolctl. Engine and torch
runs alternate in blocks and the table reports the median per-step time of each, so a noisy
machine hits both alike.

    .venv/bin/python benchmarks/engine_vs_torch.py [--threads 1 2] [--steps 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

import engine
from engine import nn, optim
from engine.nn import functional as F

BATCH = 128
TARGETS = {"mlp": 1.5, "cnn": 3.0}


def build_mlp() -> tuple[nn.Module, torch.nn.Module, tuple[int, ...]]:
    ours = nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    t = torch.nn
    theirs = t.Sequential(
        t.Linear(784, 512), t.ReLU(), t.Linear(512, 512), t.ReLU(), t.Linear(512, 10)
    )
    return ours, theirs, (BATCH, 784)


def build_cnn() -> tuple[nn.Module, torch.nn.Module, tuple[int, ...]]:
    ours = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip
    t = torch.nn
    theirs = t.Sequential(
        t.Conv2d(1, 32, 3, padding=1), t.ReLU(), t.MaxPool2d(2),
        t.Conv2d(32, 64, 3, padding=1), t.ReLU(), t.MaxPool2d(2),
        t.Flatten(), t.Linear(64 * 7 * 7, 128), t.ReLU(), t.Linear(128, 10),
    )  # fmt: skip
    return ours, theirs, (BATCH, 1, 28, 28)


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.nn.Module, tuple[int, ...]]]] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
}


def steppers(name: str) -> tuple[Callable[[], float], Callable[[], float]]:
    """An engine step and a torch step over identical weights and data; each returns the loss."""
    torch.manual_seed(0)
    ours, theirs, shape = MODELS[name]()
    ours.load_state_dict(theirs.state_dict())
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    y = rng.integers(0, 10, size=BATCH)
    ex, ey = engine.Tensor(x), engine.Tensor(y)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    opt = optim.SGD(ours.parameters(), lr=0.01, momentum=0.9)
    t_opt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)

    def engine_step() -> float:
        opt.zero_grad()
        loss = F.cross_entropy(ours(ex), ey)
        loss.backward()
        opt.step()
        return loss.item()

    def torch_step() -> float:
        t_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(theirs(tx), ty)
        loss.backward()
        t_opt.step()
        return loss.item()

    first = (engine_step(), torch_step())
    if abs(first[0] - first[1]) > 1e-4 * max(1.0, abs(first[1])):
        raise SystemExit(f"{name}: first losses differ (engine {first[0]}, torch {first[1]})")
    return engine_step, torch_step


def per_step_ms(step: Callable[[], float], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) * 1000 / steps


def measure(name: str, threads: int, steps: int, repeats: int) -> tuple[float, float]:
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads):
        engine_step, torch_step = steppers(name)
        for step in (engine_step, torch_step):  # warm-up
            per_step_ms(step, 3)
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(per_step_ms(engine_step, steps))
            theirs.append(per_step_ms(torch_step, steps))
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="alternating blocks per side")
    args = parser.parse_args()

    blas = ", ".join(f"{i['internal_api']} {i['version']}" for i in threadpool_info())
    print(f"torch {torch.__version__}, numpy {np.__version__} ({blas}); float32, batch {BATCH}; "
          f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}")  # fmt: skip
    print()
    print("| model | threads | engine ms/step | torch ms/step | ratio | target |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        for threads in args.threads:
            ours, theirs = measure(name, threads, args.steps, args.repeats)
            ratio = ours / theirs
            verdict = "met" if ratio <= TARGETS[name] else "missed"
            print(f"| {name} | {threads} | {ours:.1f} | {theirs:.1f} | {ratio:.2f}x | "
                  f"<= {TARGETS[name]}x {verdict} |", flush=True)  # fmt: skip
    print()
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
