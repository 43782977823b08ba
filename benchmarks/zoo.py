"""Zoo benchmark: real models served by tapeserve against a hand-written Flask app and raw ORT.

One command, every figure side by side on the same machine (shared and noisy: compare only
figures from one run; the load average is recorded with each cell):

1. builds the full-size zoo members (modelzoo): a GlobalAveragePool over 224x224x3 FP32
   images (the request body is the cost; 1, 4 and 8 clients), ResNet-50 (224x224 FP32
   images), BERT-base after onnxruntime's transformer optimizer (one sequence per request,
   lengths 16-128 mixed; served with pad_variable_length_inputs, and beside it unpadded and
   with length buckets) and XGBoost (200 trees, 32 features, one row per request);
2. raw onnxruntime in-process (intra-op threads = the machine's CPUs, as the servers use them
   all) at batch 1, 8 and 32: the compute limit ("raw ORT best");
3. starts tapeserve (2 workers, `--log-level warning`, each model batching up to 32), the same
   with `share_weights: false` (the memory and speed of a private copy per worker, as before),
   and the hand-written Flask app (benchmarks/servers/flask_zoo.py: orjson.loads +
   np.asarray + onnxruntime, Gunicorn gthread 2 x 4); every configuration's answer is checked
   against onnxruntime once;
4. drives each with wrk (benchmarks/wrk/post_many.lua) at 1, 8 and 32 connections, cells
   interleaved, warm-up and measured time stretched for heavy models (at least 2 rounds of
   c requests at raw ORT's best rate and 10 rounds): throughput (requests = samples), p50/p99,
   CPU seconds per request (all the server's processes, from /proc) and peak summed PSS;
5. the 2 GiB model with external data: summed PSS of tapeserve with 1 and 4 workers (shared
   weights) and 1 and 2 workers with `share_weights: false`, and the time to readiness;
6. writes benchmarks/results/zoo.{md,json} with the targets of issue 12.

    .venv/bin/python benchmarks/zoo.py [--duration 6] [--warmup 2] [--models resnet50,bert,xgboost]
        [--connections 1,8,32] [--skip-large]

About 15 minutes with the defaults. Needs wrk, torch==2.13.0 and the zoo's exporters
(`make install`, `.ci/run`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.serving import MemorySampler, gunicorn, parse_wrk, versions  # noqa: E402
from loadgen.http import encode_request  # noqa: E402
from modelzoo import build  # noqa: E402
from modelzoo.model import error, run_onnxruntime  # noqa: E402
from tests.support.memory import memory_kb, process_tree  # noqa: E402
from tests.support.server import start_server  # noqa: E402

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk" / "post_many.lua"
RESULTS = HERE / "results"
#: benchmark name -> zoo member
MODELS = {
    "image": "image_pool",
    "resnet50": "resnet50",
    "bert": "bert_optimized",
    "xgboost": "xgboost",
}
#: Connections per model where they differ from --connections (the image-body case of issue 12
#: was measured with 4 clients).
CONNECTIONS = {"image": (1, 4, 8)}
RAW_BATCHES = (1, 8, 32)
BERT_LENGTHS = (16, 32, 48, 64, 80, 96, 112, 128)
MAX_BATCH = 32


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_seconds(root: int) -> float:
    """User + system CPU time of `root` and its descendants (live processes)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


# ---------------------------------------------------------------------------------------------
# Samples and bodies


def samples(name: str, member) -> list[dict[str, np.ndarray]]:
    """The per-request inputs: one image, one sequence of each length, one tree row."""
    if name == "bert":
        return [member.inputs(batch=1, seed=i, sequence=n) for i, n in enumerate(BERT_LENGTHS)]
    return [member.inputs(batch=1, seed=i) for i in range(4)]


def flask_body(feeds: dict[str, np.ndarray]) -> bytes:
    return json.dumps({"inputs": {k: v.tolist() for k, v in feeds.items()}}).encode()


def v2_outputs(body: bytes, headers) -> dict[str, np.ndarray]:
    length = headers.get("Inference-Header-Content-Length")
    head = json.loads(body if length is None else body[: int(length)])
    out, offset = {}, int(length or 0)
    for item in head["outputs"]:
        dtype = {"FP32": np.float32, "INT64": np.int64, "FP16": np.float16}[item["datatype"]]
        if "data" in item:
            out[item["name"]] = np.asarray(item["data"], dtype).reshape(item["shape"])
        else:
            size = item["parameters"]["binary_data_size"]
            raw = np.frombuffer(body, dtype, count=size // np.dtype(dtype).itemsize, offset=offset)
            out[item["name"]] = raw.reshape(item["shape"])
            offset += size
    return out


@dataclass
class Config:
    """One server configuration under load: its bodies (round-robin) and how to check them."""

    label: str
    model: str
    server: str
    path: str
    bodies: list[tuple[bytes, dict]]
    kind: str  # "v2" | "flask"
    files: list[str] = field(default_factory=list)


def check(url: str, config: Config, feeds: list[dict], member) -> None:
    """POST each body once; the answer must agree with onnxruntime run directly."""
    for (body, headers), sample in zip(config.bodies, feeds, strict=True):
        response = requests.post(url + config.path, data=body, headers=headers, timeout=120)
        if response.status_code != 200:
            raise RuntimeError(f"{config.label}: HTTP {response.status_code} {response.text[:300]}")
        if config.kind == "flask":
            doc = response.json()["outputs"]
            got = {k: np.asarray(v) for k, v in doc.items()}
        else:
            got = v2_outputs(response.content, response.headers)
        want = run_onnxruntime(member.path, sample)
        for key, value in want.items():
            if error(value, np.asarray(got[key], value.dtype)) > max(member.tolerance(key), 1e-4):
                raise RuntimeError(f"{config.label}: output {key} differs from onnxruntime")


def run_wrk(url: str, config: Config, connections: int, seconds: float) -> dict:
    env = dict(
        os.environ,
        WRK_BODIES=";".join(config.files),
        WRK_CONTENT_TYPE=config.bodies[0][1].get("Content-Type", "application/json"),
    )
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
            "-s", str(LUA), url + config.path]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 90)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}")
    return parse_wrk(done.stdout)


# ---------------------------------------------------------------------------------------------
# Raw onnxruntime


def raw_ort(member, feeds: list[dict], threads: int, seconds: float = 2.0) -> dict[int, float]:
    """Samples/s of onnxruntime in-process at each batch size (median of 3 timed loops)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(member.path), options, providers=["CPUExecutionProvider"])
    out = {}
    for batch in RAW_BATCHES:
        if len({next(iter(f.values())).shape for f in feeds}) > 1:  # BERT: a length per batch
            batches = [{k: np.repeat(f[k], batch, axis=0) for k in f} for f in feeds]
        else:
            group = [feeds[i % len(feeds)] for i in range(batch)]
            batches = [{k: np.concatenate([g[k] for g in group]) for k in group[0]}]
        session.run(None, batches[0])
        rates = []
        for _ in range(3):
            start, runs = time.perf_counter(), 0
            while time.perf_counter() - start < seconds / 3 or runs < len(batches):
                session.run(None, batches[runs % len(batches)])
                runs += 1
            rates.append(runs * batch / (time.perf_counter() - start))
        out[batch] = round(statistics.median(rates), 1)
    return out


# ---------------------------------------------------------------------------------------------
# Servers


#: BERT is served with variable-length padding (docs/model-config.md); in the shared-weights
#: server also without it and with length buckets, as folders beside it (same weights), so
#: the three run side by side: model folder -> config keys beyond the defaults.
BERT_VARIANTS = {
    "bert": {"pad_variable_length_inputs": True},
    "bert_unpadded": {},
    "bert_buckets": {"pad_variable_length_inputs": True, "padding_buckets": [32, 64, 96, 128]},
}


def write_repository(root: Path, members: dict, share: bool) -> None:
    for name, member in members.items():
        folders = {name: {}}
        if name == "bert":
            folders = BERT_VARIANTS if share else {"bert": BERT_VARIANTS["bert"]}
        for folder, extra in folders.items():
            target = root / folder
            shutil.copytree(member.directory, target)
            config = {"max_batch_size": MAX_BATCH, "share_weights": share, **extra}
            (target / "config.json").write_text(json.dumps(config))


@contextlib.contextmanager
def tapeserve(repository: Path, workers: int = 2):
    server = start_server(
        repository, workers=workers, threads=16, extra_args=["--log-level", "warning"],
        timeout=900,
    )  # fmt: skip
    try:
        yield server.url, server.process.pid
    finally:
        server.stop()


@contextlib.contextmanager
def flask(model_dir: Path, scratch: Path):
    with gunicorn(
        "flask_zoo:app", workers=2, threads=4, worker_class="gthread",
        env={"BENCH_MODELS": str(model_dir), "ORT_THREADS": "1"}, scratch=scratch,
        health="/health",
    ) as server:  # fmt: skip
        yield server.url, server.pid


# ---------------------------------------------------------------------------------------------
# The 2 GiB model


def large_memory(scratch: Path, workers_list: list[tuple[int, bool]], log) -> list[dict]:
    """Summed PSS and time to ready of tapeserve serving the 2 GiB model."""
    member = build("large", scratch / "large-build", size="full")
    feeds = member.inputs(batch=1, seed=0)
    body, headers = encode_request(feeds, True)
    rows = []
    for workers, share in workers_list:
        repo = scratch / f"large-{workers}-{share}"
        shutil.copytree(member.directory, repo / "large")
        (repo / "large" / "config.json").write_text(
            json.dumps({"max_batch_size": 8, "share_weights": share})
        )
        started = time.monotonic()
        server = start_server(
            repo, workers=workers, timeout=1200,
            extra_args=["--log-level", "warning", "--load-probe-memory-mb", "16384"],
        )  # fmt: skip
        ready = time.monotonic() - started
        try:
            for _ in range(6 * workers):  # every worker answers (touching all its weights)
                response = requests.post(
                    server.url + "/v2/models/large/infer", data=body, headers=headers, timeout=300
                )
                response.raise_for_status()
            got = v2_outputs(response.content, response.headers)["y"]
            want = member.reference(feeds)["y"]
            if error(want, got) > 1e-4:
                raise RuntimeError("the large model's answer differs from numpy")
            time.sleep(1)
            _, pss = memory_kb(process_tree(server.process.pid))
        finally:
            server.stop()
        row = {"workers": workers, "share_weights": share, "pss_mb": round(pss / 1024),
               "ready_s": round(ready, 1), "load": load_average()}  # fmt: skip
        log(f"large model: {row}")
        rows.append(row)
        shutil.rmtree(repo, ignore_errors=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Report


def cell(rows, label, model, c):
    return next(
        (r for r in rows if r["label"] == label and r["model"] == model and r["c"] == c), None
    )


def targets(rows: list[dict], raw: dict) -> list[tuple[str, str, str, bool | None]]:
    out = []

    def rps(label, model, c):
        row = cell(rows, label, model, c)
        return row["rps"] if row else None

    if "resnet50" in raw:
        best = max(raw["resnet50"].values())
        got = rps("tapeserve binary", "resnet50", 8)
        if got:
            out.append(("ResNet-50 binary c=8 vs raw ORT best samples/s", f"{got / best:.0%} "
                        f"({got:.1f} vs {best:.1f})", ">= 90%", got / best >= 0.9))  # fmt: skip
        ours, theirs = rps("tapeserve JSON", "resnet50", 8), rps("flask JSON", "resnet50", 8)
        if ours and theirs:
            out.append(("ResNet-50 JSON c=8 vs the Flask app", f"{ours / theirs:.2f}x",
                        ">= 2x", ours / theirs >= 2))  # fmt: skip
    for c in (4, 8):
        ours, theirs = rps("tapeserve JSON", "image", c), rps("flask JSON", "image", c)
        if ours and theirs:
            what = f"224x224x3 FP32 JSON body (GlobalAveragePool) c={c} vs the Flask app"
            out.append((what, f"{ours / theirs:.2f}x", ">= 2x", ours / theirs >= 2))
    ours, theirs = rps("tapeserve JSON", "bert", 32), rps("flask JSON", "bert", 32)
    if ours and theirs:
        out.append(("BERT mixed lengths JSON c=32 (padded) vs the Flask app",
                    f"{ours / theirs:.2f}x", ">= 1.5x", ours / theirs >= 1.5))  # fmt: skip
    for label in ("JSON buckets", "JSON unpadded"):
        other = rps(f"tapeserve {label}", "bert", 32)
        if other and theirs:
            out.append((f"BERT mixed lengths {label} c=32 vs the Flask app",
                        f"{other / theirs:.2f}x", ">= 1.5x", other / theirs >= 1.5))  # fmt: skip
    for model in raw:
        shared = rps("tapeserve binary", model, 8)
        private = rps("tapeserve binary private", model, 8)
        if shared and private:
            what = f"{model} binary c=8, shared weights vs private copies"
            out.append((what, f"{shared / private:.2f}x", ">= 0.95x", shared / private >= 0.95))
    return out


def markdown(rows, raw, large, info) -> str:
    lines = ["# Zoo benchmark", "", f"Run at {info['started']} UTC; {info['settings']}.", "",
             f"Load average (1/5/15 min) at start: {info['load_start']}; at end: "
             f"{info['load_end']}.", "",
             "## Raw onnxruntime in-process, samples/s", "",
             "| model | " + " | ".join(f"batch {b}" for b in RAW_BATCHES) + " |",
             "|---|" + "---|" * len(RAW_BATCHES)]  # fmt: skip
    for model, per in raw.items():
        lines.append(f"| {model} | " + " | ".join(f"{per[b]:,.1f}" for b in RAW_BATCHES) + " |")
    for model in dict.fromkeys(r["model"] for r in rows):
        levels = sorted({r["c"] for r in rows if r["model"] == model})
        head = (
            "| server | body | " + " | ".join(f"c={c}" for c in levels) + " | errors | peak PSS |"
        )
        rule = "|---|---|" + "---|" * len(levels) + "---|---|"
        lines += ["", f"## {model}: samples/s (p50 / p99 ms) [CPU ms per request]", "", head, rule]
        for label in dict.fromkeys(r["label"] for r in rows if r["model"] == model):
            cells, errors, first = [], 0, None
            for c in levels:
                row = cell(rows, label, model, c)
                if row is None:
                    cells.append("")
                    continue
                first = first or row
                errors += row["errors"]
                cells.append(f"{row['rps']:,.1f} ({row['p50_ms']:.0f} / {row['p99_ms']:.0f}) "
                             f"[{row['cpu_ms_per_request']:.1f}]")  # fmt: skip
            lines.append(f"| {label} | {first['body_bytes']:,} B | " + " | ".join(cells) +
                         f" | {errors} | {first['peak_pss_mb']:.0f} MB |")  # fmt: skip
    if large:
        lines += [
            "",
            "## The 2 GiB model (external data): summed PSS of the server",
            "",
            "| workers | weights | summed PSS | ready after | load |",
            "|---|---|---|---|---|",
        ]
        for row in large:
            how = "shared" if row["share_weights"] else "private copy per worker"
            lines.append(f"| {row['workers']} | {how} | {row['pss_mb']:,} MB | "
                         f"{row['ready_s']} s | {row['load']} |")  # fmt: skip
        one = next((r for r in large if r["workers"] == 1 and r["share_weights"]), None)
        four = next((r for r in large if r["workers"] == 4 and r["share_weights"]), None)
        if one and four:
            ratio = four["pss_mb"] / one["pss_mb"]
            lines += ["", f"4 workers / 1 worker (shared): {ratio:.2f}x (target <= 1.3x: "
                      f"{'met' if ratio <= 1.3 else 'missed'})."]  # fmt: skip
    tgts = targets(rows, raw)
    if tgts:
        lines += [
            "",
            "## Targets",
            "",
            "| target | measured | required | met |",
            "|---|---|---|---|",
        ]
        lines += [f"| {t} | {m} | {r} | {'yes' if ok else 'NO'} |" for t, m, r, ok in tgts]
    lines += [
        "",
        "## Machine and versions",
        "",
        "```",
        json.dumps(info["versions"], indent=1),
        "```",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--connections", default="1,8,32")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    conns = [int(c) for c in args.connections.split(",")]
    threads = len(os.sched_getaffinity(0))
    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-zoo-bench-"))
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    load_start = load_average()

    def log(text: str) -> None:
        print(text, flush=True)

    rows: list[dict] = []
    raw: dict = {}
    large: list[dict] = []
    try:
        built, feeds, flask_dir = {}, {}, scratch / "flask-models"
        flask_dir.mkdir()
        for name in models:
            t = time.monotonic()
            built[name] = build(MODELS[name], scratch / "zoo", size="full")
            shutil.copy(built[name].path, flask_dir / f"{name}.onnx")
            feeds[name] = samples(name, built[name])
            log(f"built {name} ({built[name].notes}) in {time.monotonic() - t:.0f} s")
            raw[name] = raw_ort(built[name], feeds[name], threads)
            log(f"raw onnxruntime {name} ({threads} threads): {raw[name]} samples/s")
        shared_repo, private_repo = scratch / "shared", scratch / "private"
        renamed = {name: member for name, member in built.items()}
        write_repository(shared_repo, renamed, True)
        write_repository(private_repo, renamed, False)
        configs: dict[str, list[Config]] = {"tapeserve": [], "private": [], "flask": []}
        for name in models:
            v2 = f"/v2/models/{name}/infer"
            for binary in (False, True):
                kind = "binary" if binary else "JSON"
                bodies = [encode_request(f, binary) for f in feeds[name]]
                configs["tapeserve"].append(Config(f"tapeserve {kind}", name, "tapeserve", v2,
                                                   bodies, "v2"))  # fmt: skip
                if binary:
                    configs["private"].append(Config("tapeserve binary private", name, "private",
                                                     v2, bodies, "v2"))  # fmt: skip
                elif name == "bert":
                    for folder, label in (("bert_unpadded", "JSON unpadded"),
                                          ("bert_buckets", "JSON buckets")):  # fmt: skip
                        configs["tapeserve"].append(Config(f"tapeserve {label}", name, "tapeserve",
                                                           f"/v2/models/{folder}/infer", bodies,
                                                           "v2"))  # fmt: skip
            bodies = [(flask_body(f), {"Content-Type": "application/json"}) for f in feeds[name]]
            configs["flask"].append(Config("flask JSON", name, "flask", f"/predict/{name}",
                                           bodies, "flask"))  # fmt: skip
        for group in configs.values():
            for config in group:
                for i, (body, headers) in enumerate(config.bodies):
                    path = scratch / f"body-{config.label.replace(' ', '_')}-{config.model}-{i}"
                    path.write_bytes(body)
                    length = headers.get("Inference-Header-Content-Length", "")
                    config.files.append(f"{path}|{length}")
        with contextlib.ExitStack() as stack:
            servers = {
                "tapeserve": stack.enter_context(tapeserve(shared_repo)),
                "private": stack.enter_context(tapeserve(private_repo)),
                "flask": stack.enter_context(flask(flask_dir, scratch)),
            }
            samplers = {key: MemorySampler(pid) for key, (_, pid) in servers.items()}
            for key, group in configs.items():
                for config in group:
                    check(servers[key][0], config, feeds[config.model], built[config.model])
            log("every configuration answers what onnxruntime answers")
            for sampler in samplers.values():
                sampler.start()
            try:
                for name in models:
                    for c in CONNECTIONS.get(name, conns):
                        for key, group in configs.items():
                            for config in group:
                                if config.model != name or (key == "private" and c == 1):
                                    continue
                                url, pid = servers[key]
                                # a heavy model needs seconds per round of c requests
                                rounds = c / max(raw[name].values())
                                run_wrk(url, config, c, max(args.warmup, 2 + 2 * rounds))
                                cpu0 = cpu_seconds(pid)
                                result = run_wrk(url, config, c, max(args.duration, 10 * rounds))
                                cpu = cpu_seconds(pid) - cpu0
                                row = {
                                    "label": config.label, "model": name, "c": c,
                                    "body_bytes": len(config.bodies[0][0]),
                                    **{k: result[k] for k in ("rps", "p50_ms", "p99_ms",
                                                              "errors", "requests")},
                                    "cpu_ms_per_request": 1e3 * cpu / max(1, result["requests"]),
                                    "load": load_average(), "_sampler": key,
                                }  # fmt: skip
                                rows.append(row)
                                log(f"{config.label:26s} {name:9s} c={c:<3d} {row['rps']:8.1f}/s"
                                    f"  p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms"
                                    f"  CPU {row['cpu_ms_per_request']:6.1f} ms/req  errors "
                                    f"{row['errors']}  load {row['load']}")  # fmt: skip
            finally:
                for sampler in samplers.values():
                    sampler.stop()
            for row in rows:
                row["peak_pss_mb"] = round(samplers[row.pop("_sampler")].peak_pss_kb / 1024)
        if not args.skip_large:
            large = large_memory(scratch, [(1, True), (4, True), (1, False), (2, False)], log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    settings = (
        f"wrk 1 thread, {args.warmup:g} s warm-up + {args.duration:g} s per cell; tapeserve 2 "
        f"workers (async), max_batch_size {MAX_BATCH}, --log-level warning; `private` rows: "
        "share_weights false; Flask app: Gunicorn gthread 2 x 4, intra-op threads 1; raw ORT: "
        f"intra-op threads {threads}; one sample per request (BERT: sequence lengths "
        f"{BERT_LENGTHS[0]}-{BERT_LENGTHS[-1]} in turn; tapeserve pads them into batches, "
        "`unpadded` rows batch equal lengths only, `buckets` rows pad within buckets 32/64/96/128)"
    )
    info = {"started": started, "settings": settings, "versions": versions(),
            "load_start": load_start, "load_end": load_average()}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "zoo.json").write_text(
        json.dumps({**info, "raw_ort": raw, "rows": rows, "large": large}, indent=1)
    )
    (args.out / "zoo.md").write_text(markdown(rows, raw, large, info))
    log((args.out / "zoo.md").read_text())


if __name__ == "__main__":
    main()
