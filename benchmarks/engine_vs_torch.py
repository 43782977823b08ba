"""Training-step time of the engine against PyTorch CPU and against the engine at a baseline
revision, side by side; then what higher derivatives cost.

Table 1: each step is zero_grad, forward, cross-entropy, backward and an SGD (momentum 0.9)
update, float32, batch 128, for an MLP 784-512-512-10 and a small CNN on 1x28x28 input
(conv32-pool-conv64-pool-128-10). Three worker processes run the same model, weights and batch:
this checkout's engine, the engine at `--base` (exported with `git archive`), and torch. Each
imports only its own library, with its thread pools sized by environment before import
(OMP/OPENBLAS/MKL_NUM_THREADS) and checked with threadpoolctl, so no process's idle pool spins
on the cores the other one is timing (when torch and numpy shared one process, OpenBLAS's
workers busy-waiting ~0.1 s after the engine's last GEMM ran into torch's block, and torch's
OpenMP workers into the engine's: that, page-fault churn and other load on the shared cores
are what made the old single-process ratios swing; see engine/README.md). Blocks of `--steps`
steps rotate between the three for `--rounds` rounds, `--pause` apart (an idle OpenBLAS pool
spins ~0.1 s after its process's last GEMM: without the pause the engine's 2-thread MLP blocks
that followed the baseline's ran at 13 ms instead of 6); the table reports each side's median
block and the ratios of medians, and "engine/base CPU" the ratio of process CPU time per step,
which other load disturbs less. The load average is printed beside every row: rows taken while
it exceeds the core count were measured on a loaded machine.

Table 2: a Hessian-vector product (forward-over-reverse) against one gradient, for the MLP above
(w.r.t. its parameters) and an MLP with about 1,000 parameters, and that small MLP's full
Hessian by the engine (both modes) against torch.func.hessian.

    .venv/bin/python benchmarks/engine_vs_torch.py [--base 89011d2] [--threads 1 2]
        [--models mlp cnn] [--steps 10] [--rounds 9] [--skip-higher]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 128
TARGETS = {"mlp": 1.2, "cnn": 2.0}  # engine / torch at 2 threads (issue 16)
DEFAULT_BASE = "89011d2"  # main before higher-order derivatives


# --- the models, built the same way by every worker ------------------------------------------


def layers(name: str) -> list[tuple]:
    if name == "mlp":
        return [("linear", 784, 512), ("relu",), ("linear", 512, 512), ("relu",),
                ("linear", 512, 10)]  # fmt: skip
    return [("conv", 1, 32), ("relu",), ("pool",), ("conv", 32, 64), ("relu",), ("pool",),
            ("flatten",), ("linear", 64 * 7 * 7, 128), ("relu",), ("linear", 128, 10)]  # fmt: skip


def input_shape(name: str) -> tuple[int, ...]:
    return (BATCH, 784) if name == "mlp" else (BATCH, 1, 28, 28)


def init_weights(model_state: dict) -> dict:
    """Seeded uniform(+-1/sqrt(fan_in)) weights by state_dict name, the same for every side."""
    import numpy as np

    rng = np.random.default_rng(0)
    weights, fan_in = {}, 1
    for key, shape in model_state.items():
        if len(shape) > 1:
            fan_in = int(np.prod(shape[1:]))
        bound = 1.0 / np.sqrt(fan_in)
        weights[key] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return weights


def batch(name: str):
    import numpy as np

    rng = np.random.default_rng(1)
    return rng.random(input_shape(name), dtype=np.float32), rng.integers(0, 10, BATCH)


def engine_step(name: str) -> Callable[[], float]:
    import engine
    from engine import nn, optim
    from engine.nn import functional as F

    mods = []
    for spec in layers(name):
        kind = spec[0]
        if kind == "linear":
            mods.append(nn.Linear(spec[1], spec[2]))
        elif kind == "conv":
            mods.append(nn.Conv2d(spec[1], spec[2], 3, padding=1))
        elif kind == "relu":
            mods.append(nn.ReLU())
        elif kind == "pool":
            mods.append(nn.MaxPool2d(2))
        else:
            mods.append(nn.Flatten())
    model = nn.Sequential(*mods)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(init_weights(state))
    x, y = batch(name)
    ex, ey = engine.Tensor(x), engine.Tensor(y)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        opt.zero_grad()
        loss = F.cross_entropy(model(ex), ey)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def torch_step(name: str) -> Callable[[], float]:
    import torch

    t = torch.nn
    mods = []
    for spec in layers(name):
        kind = spec[0]
        if kind == "linear":
            mods.append(t.Linear(spec[1], spec[2]))
        elif kind == "conv":
            mods.append(t.Conv2d(spec[1], spec[2], 3, padding=1))
        elif kind == "relu":
            mods.append(t.ReLU())
        elif kind == "pool":
            mods.append(t.MaxPool2d(2))
        else:
            mods.append(t.Flatten())
    model = t.Sequential(*mods)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in init_weights(state).items()})
    x, y = batch(name)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tx), ty)
        loss.backward()
        opt.step()
        return loss.item()

    return step


# --- a worker process: one library, one model, timed blocks on request ------------------------


NO_SPIN = {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}


def thread_env(threads: int, no_spin: bool = False) -> dict[str, str]:
    """Pool sizes for a worker; with no_spin, idle OpenBLAS and OpenMP workers sleep at once
    instead of busy-waiting (both libraries' defaults spin)."""
    n = str(threads)
    env = {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    return {**env, **NO_SPIN} if no_spin else env


def worker(side: str, name: str, threads: int) -> None:
    """Answer "run N" lines on stdin with one JSON line: per-step wall and CPU milliseconds."""
    from threadpoolctl import threadpool_info, threadpool_limits

    if side == "torch":
        import torch

        torch.set_num_threads(threads)
        step = torch_step(name)
        lib = f"torch {torch.__version__}"
    else:
        import engine

        step = engine_step(name)
        lib = f"engine from {Path(engine.__file__).parent}"
    pools = [
        f"{p['internal_api']} {p.get('version')} {p.get('architecture', '')} x{p['num_threads']}"
        for p in threadpool_info()
    ]
    with threadpool_limits(limits=threads):
        first = step()
        print(json.dumps({"lib": lib, "pools": pools, "loss": first}), flush=True)
        for line in sys.stdin:
            n = int(line.split()[1])
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                step()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(json.dumps({"ms": wall * 1e3 / n, "cpu_ms": cpu * 1e3 / n}), flush=True)


class Worker:
    def __init__(self, side: str, name: str, threads: int, pythonpath: str | None,
                 no_spin: bool = False) -> None:  # fmt: skip
        env = {**os.environ, **thread_env(threads, no_spin)}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.side = side
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", "torch" if side == "torch" else "engine",
             "--models", name, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
        )  # fmt: skip
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.side} worker died (exit {self.proc.wait()})")
        return json.loads(line)

    def run(self, steps: int) -> dict:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def export_engine(rev: str, target: Path) -> None:
    """`engine/` as committed at `rev`, importable from `target` (put first on PYTHONPATH)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "engine"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def first_order(args: argparse.Namespace, base_dir: Path) -> None:
    print("| model | threads | engine ms | base ms | torch ms | engine/torch | base/torch | "
          "engine/base | engine/base CPU | load 1/5 min |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for threads in args.threads:
            sides = {
                "engine": Worker("engine", name, threads, str(ROOT), args.no_spin),
                "base": Worker("base", name, threads, str(base_dir), args.no_spin),
                "torch": Worker("torch", name, threads, None, args.no_spin),
            }
            losses = {k: w.hello["loss"] for k, w in sides.items()}
            if max(losses.values()) - min(losses.values()) > 1e-4 * max(1.0, losses["torch"]):
                raise SystemExit(f"{name}: first losses differ {losses}")
            if args.verbose:
                for k, w in sides.items():
                    print(f"<!-- {k}: {w.hello['lib']}; pools {w.hello['pools']} -->")
            before = load()
            times: dict[str, list[dict]] = {k: [] for k in sides}
            order = list(sides)
            for w in sides.values():
                w.run(max(2, args.steps // 3))  # warm-up
            for r in range(args.rounds):
                for k in order[r % 3 :] + order[: r % 3]:
                    time.sleep(args.pause)  # the previous side's idle pool stops spinning
                    times[k].append(sides[k].run(args.steps))
            for w in sides.values():
                w.close()
            med = {k: statistics.median(t["ms"] for t in v) for k, v in times.items()}
            cpu = {k: statistics.median(t["cpu_ms"] for t in v) for k, v in times.items()}
            print(f"| {name} | {threads} | {med['engine']:.2f} | {med['base']:.2f} | "
                  f"{med['torch']:.2f} | {med['engine'] / med['torch']:.2f}x | "
                  f"{med['base'] / med['torch']:.2f}x | {med['engine'] / med['base']:.3f} | "
                  f"{cpu['engine'] / cpu['base']:.3f} | {before} -> {load()} |",
                  flush=True)  # fmt: skip
            if args.verbose:
                for k, v in times.items():
                    print(f"<!-- {k} blocks ms: {[round(t['ms'], 2) for t in v]} -->")
    print()
    print(
        "Targets at 2 threads: MLP <= 1.2x torch, CNN <= 2x; engine/base within 1.05. "
        "engine/base CPU compares process CPU time per step (less sensitive to other load)."
    )


# --- higher order -------------------------------------------------------------------------


def small_mlp_problem():
    """An 8-40-16-1 tanh MLP (1,033 parameters) as a function of one flat parameter vector,
    with its mean squared error on 64 fixed samples."""
    import numpy as np

    sizes = [(40, 8), (16, 40), (1, 16)]
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 8))
    y = rng.standard_normal((64, 1))
    n = sum(o * i + o for o, i in sizes)
    theta = rng.standard_normal(n) * 0.3
    return sizes, x, y, theta


def unflatten(theta, sizes, index_fn):
    params, at = [], 0
    for o, i in sizes:
        w = index_fn(theta, at, at + o * i).reshape(o, i)
        at += o * i
        b = index_fn(theta, at, at + o)
        at += o
        params.append((w, b))
    return params


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, calls: int = 1) -> dict:
    """Median milliseconds per call of each function, their blocks of `calls` calls taking
    turns for `rounds` rounds (so load drifting during the run hits every side alike)."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            samples[k].append((time.perf_counter() - start) * 1e3 / calls)
    return {k: statistics.median(v) for k, v in samples.items()}


def higher_order(args: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    import engine
    import engine.functional as F
    from engine.autodiff import grad, hessian, hvp

    threads = max(args.threads)
    torch.set_num_threads(threads)
    sizes, x, y, theta = small_mlp_problem()
    ex, ey = engine.Tensor(x), engine.Tensor(y)

    def loss_engine(th):
        h = ex
        params = unflatten(th, sizes, lambda t, a, b: t[a:b])
        for k, (w, b) in enumerate(params):
            h = F.linear(h, w, b)
            if k < len(params) - 1:
                h = h.tanh()
        return F.mse_loss(h, ey)

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def loss_torch(th):
        h = tx
        params = unflatten(th, sizes, lambda t, a, b: t[a:b])
        for k, (w, b) in enumerate(params):
            h = torch.nn.functional.linear(h, w, b)
            if k < len(params) - 1:
                h = h.tanh()
        return torch.nn.functional.mse_loss(h, ty)

    v = np.random.default_rng(3).standard_normal(theta.size)
    rows = []
    with threadpool_limits(limits=threads):
        t = interleaved({"grad": lambda: grad(loss_engine)(theta),
                         "hvp": lambda: hvp(loss_engine, theta, v)}, args.repeats, 20)  # fmt: skip
        rows.append(("MLP 8-40-16-1 (1,033 params), float64, batch 64", t["grad"], t["hvp"],
                     load()))  # fmt: skip
        big = big_mlp_problem()
        t = interleaved({"grad": lambda: grad(big["loss"])(big["theta"]),
                         "hvp": lambda: hvp(big["loss"], big["theta"], big["v"])},
                        args.repeats, 3)  # fmt: skip
        rows.append(("MLP 784-512-512-10 (669,706 params), float32, batch 128", t["grad"],
                     t["hvp"], load()))  # fmt: skip
        h_eng = engine.autodiff.hessian
        tt = torch.from_numpy(theta)
        before = load()
        t = interleaved({
            "fwd": lambda: h_eng(loss_engine, "forward-over-reverse")(theta),
            "rev": lambda: h_eng(loss_engine, "reverse-over-reverse")(theta),
            "torch": lambda: torch.func.hessian(loss_torch)(tt),
        }, 3)  # fmt: skip
        fwd, rev, ref = t["fwd"], t["rev"], t["torch"]
        check = np.asarray(hessian(loss_engine)(theta))
        err = np.abs(check - torch.func.hessian(loss_torch)(tt).numpy()).max()
    print(f"Hessian-vector product against one gradient ({threads} threads, interleaved blocks, "
          "medians; hvp is forward-over-reverse: target <= 3x):")  # fmt: skip
    print()
    print("| function | gradient ms | hvp ms | hvp / gradient | load 1/5 min |")
    print("|---|---|---|---|---|")
    for label, g_ms, h_ms, at in rows:
        print(f"| {label} | {g_ms:.2f} | {h_ms:.2f} | {h_ms / g_ms:.2f}x | {at} |")
    print()
    print(f"Hessian of the 1,033-parameter MLP loss ({theta.size}x{theta.size}, float64, "
          f"{threads} threads, median of 3 interleaved runs, load {before} -> {load()}; "
          f"max |engine - torch| = {err:.1e}):")  # fmt: skip
    print()
    print("| method | ms | / torch.func.hessian |")
    print("|---|---|---|")
    print(f"| engine hessian, forward-over-reverse | {fwd:.0f} | {fwd / ref:.1f}x |")
    print(
        f"| engine hessian, reverse-over-reverse (auto's choice) | {rev:.0f} | {rev / ref:.1f}x |"
    )
    print(f"| torch.func.hessian (jacfwd(jacrev), vmapped) | {ref:.0f} | 1.0x |")
    print(f"\nload 1/5 min after: {load()}")


def big_mlp_problem() -> dict:
    """The benchmark MLP's loss as a function of its flat float32 parameters."""
    import numpy as np

    import engine
    import engine.functional as F

    sizes = [(512, 784), (512, 512), (10, 512)]
    state = {}
    for k, (o, i) in enumerate(sizes):
        state[f"{k}.weight"], state[f"{k}.bias"] = (o, i), (o,)
    flat = np.concatenate([a.reshape(-1) for a in init_weights(state).values()])
    x, y = batch("mlp")
    ex, ey = engine.Tensor(x), engine.Tensor(y)

    def loss(th):
        h = ex
        params = unflatten(th, sizes, lambda t, a, b: t[a:b])
        for k, (w, b) in enumerate(params):
            h = F.linear(h, w, b)
            if k < len(params) - 1:
                h = F.relu(h)
        return F.cross_entropy(h, ey)

    v = np.random.default_rng(4).standard_normal(flat.size).astype(np.float32)
    return {"loss": loss, "theta": flat, "v": v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=9, help="blocks per side")
    parser.add_argument("--repeats", type=int, default=9, help="rounds per higher-order row")
    parser.add_argument(
        "--pause", type=float, default=0.3,
        help="seconds between blocks: OpenBLAS workers spin ~0.1 s after a process's last "
        "GEMM, and the next process's 2-thread block ran 2x slower without it")  # fmt: skip
    parser.add_argument("--base", default=DEFAULT_BASE, help="git revision of the baseline")
    parser.add_argument("--skip-first-order", action="store_true")
    parser.add_argument("--skip-higher", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="libraries, pools, every block")
    parser.add_argument(
        "--no-spin", action="store_true", help="workers get " + ", ".join(
            f"{k}={v}" for k, v in NO_SPIN.items()))  # fmt: skip
    parser.add_argument("--worker", choices=["engine", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.models[0], args.threads[0])
        return

    import numpy as np
    from threadpoolctl import threadpool_info

    blas = ", ".join(
        f"{p['internal_api']} {p.get('version')} ({p.get('architecture', '?')})"
        for p in threadpool_info()
    )
    coretype = os.environ.get("OPENBLAS_CORETYPE", "unset")
    spin = "idle pools sleep (--no-spin)" if args.no_spin else "library default pool waits"
    print(
        f"numpy {np.__version__} ({blas}), OPENBLAS_CORETYPE {coretype}; {os.cpu_count()} "
        f"CPUs; float32, batch {BATCH}; base {args.base}; {spin}; load 1/5 min at start {load()}"
    )
    print()
    if not args.skip_first_order:
        with tempfile.TemporaryDirectory() as tmp:
            export_engine(args.base, Path(tmp))
            first_order(args, Path(tmp))
        print()
    if not args.skip_higher:
        higher_order(args)


if __name__ == "__main__":
    main()
