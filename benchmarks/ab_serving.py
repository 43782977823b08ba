"""Before/after: tapeserve at a git revision against the working tree, side by side, CNN.

Exports `serve/` at `--base` (default HEAD) to a temporary folder and starts it next to the
working tree's server (same repository, workers and threads; `--base-env`/`--new-env` add
environment variables to one side, e.g. to compare settings of one build). wrk drives both with
the CNN JSON and binary bodies of `benchmarks/serving.py` at each concurrency, alternating the
two servers cell by cell for `--rounds` rounds, so a drift in the machine's load hits both alike;
each cell reports its median round and the new/base ratio.

    .venv/bin/python benchmarks/ab_serving.py [--base HEAD] [--connections 1,8,64]
        [--rounds 3] [--duration 3] [--new-env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    build_model,
    check_case,
    run_wrk,
    sample,
    v2_body,
    write_repository,
)
from tests.support.server import start_server  # noqa: E402


def export_serve(rev: str, target: Path) -> None:
    """`serve/` as committed at `rev`, importable from `target` (put first on PYTHONPATH)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "serve"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def parse_env(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision of the baseline")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--model", default="cnn_batch", help="cnn_batch or cnn_nobatch")
    parser.add_argument("--bodies", default="json,binary")
    parser.add_argument("--base-env", nargs="*", default=[])
    parser.add_argument("--new-env", nargs="*", default=[])
    parser.add_argument("--new-workers", type=int, help="workers of the new side (default same)")
    parser.add_argument("--new-threads", type=int, help="threads of the new side (default same)")
    parser.add_argument(
        "--new-switch-interval", type=float, help="sys.setswitchinterval (s) in the new side"
    )
    args = parser.parse_args()
    conns = [int(c) for c in args.connections.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-ab-"))
    try:
        base_src = scratch / "base"
        base_src.mkdir()
        export_serve(args.base, base_src)
        model_path = scratch / "cnn.onnx"
        onnx.save(build_model("cnn"), model_path)
        x = sample("cnn")
        ref = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        write_repository(scratch / "repo", {"cnn": model_path}, 64)
        bodies = {}
        for kind in args.bodies.split(","):
            body, headers = v2_body(x, kind == "binary")
            path = scratch / f"{kind}.bin"
            path.write_bytes(body)
            bodies[kind] = (body, headers, path)
        base_env = {"PYTHONPATH": str(base_src), **parse_env(args.base_env)}
        new_env = parse_env(args.new_env)
        if args.new_switch_interval:  # applied at interpreter start, so in every worker
            hook = scratch / "hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text(
                f"import sys\nsys.setswitchinterval({args.new_switch_interval!r})\n"
            )
            new_env["PYTHONPATH"] = str(hook)
        sides = {"base": base_env, "new": new_env}
        shape = {
            "base": (args.workers, args.threads),
            "new": (args.new_workers or args.workers, args.new_threads or args.threads),
        }
        results: dict[tuple, list[dict]] = {}
        with contextlib.ExitStack() as stack:
            # `python -m` puts the current folder first on sys.path: start outside the checkout
            stack.callback(os.chdir, os.getcwd())
            os.chdir(scratch)
            servers = {}
            for side, env in sides.items():
                srv = start_server(
                    scratch / "repo",
                    workers=shape[side][0],
                    threads=shape[side][1],
                    extra_args=["--log-level", "warning"],
                    env=env,
                )
                stack.callback(srv.stop)
                servers[side] = srv
            from benchmarks.serving import Case

            path = f"/v2/models/{args.model}/infer"
            for side, srv in servers.items():
                for kind, (body, headers, _) in bodies.items():
                    case = Case("tapeserve", f"{side} {kind}", "cnn", path, body, headers, "v2")
                    check_case(srv.url, case, ref)
            for c in conns:
                for kind, (_, headers, body_file) in bodies.items():
                    for srv in servers.values():
                        run_wrk(srv.url + path, body_file, headers, c, args.warmup)
                    for _ in range(args.rounds):
                        for side, srv in servers.items():
                            r = run_wrk(srv.url + path, body_file, headers, c, args.duration)
                            results.setdefault((c, kind, side), []).append(r)
                            print(
                                f"c={c:<3d} {kind:6s} {side:4s} {r['rps']:8.1f} req/s "
                                f"p50 {r['p50_ms']:6.2f} ms errors {r['errors']}",
                                flush=True,
                            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def median(rows: list[dict]) -> dict:
        return sorted(rows, key=lambda r: r["rps"])[len(rows) // 2]

    load = os.getloadavg()[0]
    new = " ".join(
        f"{k}={v}"
        for k, v in {**vars(args), "new_env": " ".join(args.new_env)}.items()
        if k.startswith("new_") and v
    )
    print(
        f"\n{args.model}, {args.workers} x {args.threads}, base {args.base} "
        f"{' '.join(args.base_env)} vs working tree {new}; median of {args.rounds} "
        f"alternating {args.duration:g} s rounds; load average now {load:.1f}\n"
    )
    print("| c | body | base req/s (p50 ms) | new req/s (p50 ms) | new/base req/s | p50 ratio |")
    print("|---|---|---|---|---|---|")
    for c in conns:
        for kind in bodies:
            b, n = median(results[c, kind, "base"]), median(results[c, kind, "new"])
            print(
                f"| {c} | {kind} | {b['rps']:.0f} ({b['p50_ms']:.2f}) | {n['rps']:.0f} "
                f"({n['p50_ms']:.2f}) | {n['rps'] / b['rps']:.2f}x | "
                f"{n['p50_ms'] / b['p50_ms']:.2f}x |"
            )


if __name__ == "__main__":
    main()
