#!/usr/bin/env python3
"""The GPU check behind `make gpu-check` / deploy/gpu-check.sh: everything only a GPU can prove.

Steps, in order (each runs even when an earlier one failed; one summary table at the end):

1. CUDA libraries - deploy/cuda_libraries.py with the driver required: preload_dlls() and every
   library the CUDA provider links resolve, libcuda.so.1 included;
2. CUDA provider - an ONNX Runtime session asked for CUDA really runs on CUDA (no silent fallback);
3. CPU/GPU agreement - every bundled model (examples/models) and every model of the extra
   repositories (the model zoo: see `model_repositories`) gives the same outputs on GPU and CPU
   within fp32 tolerance (TF32 off);
4. throughput - `tapeserve serve` on CPU and on GPU with 1 and 2 workers, `tapeserve bench` at
   batch 1/8/32: samples/s in one table;
5. GPU memory per worker - NVML's per-process memory for each worker of the GPU server;
6. NVML gauges - the GPU server's /metrics carries tapeserve_gpu_* for every GPU, with sane values;
7. container - the CUDA image under podman or docker with the NVIDIA runtime: its libraries
   (step 1 inside it), and the served model's outputs against the host CPU and its /metrics gauges.

Exit status: 0 all passed, 1 any step failed. Run it through deploy/gpu-check.sh, which skips on a
machine without an NVIDIA GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUNDLED = ROOT / "examples" / "models"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
GPU_SERIES = (
    "tapeserve_gpu_utilization_ratio",
    "tapeserve_gpu_memory_used_bytes",
    "tapeserve_gpu_memory_total_bytes",
)


@dataclass
class Options:
    seconds: float = 3.0
    batches: tuple[int, ...] = (1, 8, 32)
    workers: tuple[int, ...] = (1, 2)
    device: str = "cuda"  # cuda or cuda:N, what the GPU servers are started with
    image: str = ""  # the CUDA image for the container step ("" builds one)
    engine: str = ""  # podman or docker ("" picks the first found)
    container: bool = True
    rtol: float = 1e-3
    atol: float = 1e-4
    zoo_size: str = "small"  # the model zoo's size (small|full), or "none"
    zoo_members: tuple[str, ...] = ()  # () = every member
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpu-check-")))


@dataclass
class StepResult:
    status: str
    detail: str


class StepFailed(Exception):
    """A step's verdict: FAIL with this message."""


class StepSkipped(Exception):
    """A step's verdict: SKIP (only on request, e.g. --no-container), with the reason."""


# ---- models -------------------------------------------------------------------------------------


def model_repositories() -> list[Path]:
    """Model repositories whose every model step 3 compares (and step 7 serves, the first).

    The bundled examples, then every folder in TAPESERVE_GPU_CHECK_REPOSITORIES (":"-separated):
    a site's own models. The model zoo is compared as well, see `zoo_models`.
    """
    extra = os.environ.get("TAPESERVE_GPU_CHECK_REPOSITORIES", "")
    return [BUNDLED, *(Path(p) for p in extra.split(":") if p)]


def repository_models(repository: Path) -> list[tuple[str, Path]]:
    """(name, model.onnx of the highest version) of every model in a repository."""
    models = []
    for folder in sorted(p for p in Path(repository).iterdir() if p.is_dir()):
        versions = sorted((int(v.name), v) for v in folder.iterdir() if v.name.isdigit())
        if versions and (versions[-1][1] / "model.onnx").is_file():
            models.append((folder.name, versions[-1][1] / "model.onnx"))
    return models


def zoo_models(opts: Options) -> Iterator[tuple[str, object, Exception | None]]:
    """(name, ZooModel or None, why it could not be built) for each model zoo member.

    The zoo (modelzoo/) makes real architectures with the exporters users run (ResNet-50 and
    its fp16/int8 variants, BERT, scikit-learn, LightGBM, XGBoost, detectors, a 2 GiB model);
    a member whose framework is not installed here is reported, not failed.
    """
    if opts.zoo_size == "none":
        return
    from modelzoo import MEMBERS, build

    repository = opts.workdir / "zoo"
    for name in opts.zoo_members or tuple(MEMBERS):
        try:
            yield name, build(name, repository, size=opts.zoo_size), None
        except ImportError as exc:
            yield name, None, exc


def zoo_agrees(
    member, cpu: dict[str, np.ndarray], gpu: dict[str, np.ndarray]
) -> tuple[bool, float]:
    """GPU against CPU within twice the member's own tolerance against its framework (both
    sides may each be off by that much), never tighter than 1e-4 relative."""
    from modelzoo.model import error

    worst, ok = 0.0, True
    for name, want in cpu.items():
        err = error(want, gpu[name])
        worst = max(worst, err)
        ok = ok and err <= max(2 * member.tolerance(name), 1e-4)
    return ok, worst


_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def sample_inputs(session, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every input of an ORT session; symbolic dimension 0 is the batch."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        dtype = _NUMPY_TYPES.get(arg.type)
        if dtype is None:
            raise ValueError(f"input {arg.name!r} has type {arg.type}: no GPU check for it")
        shape = [
            d if isinstance(d, int) and d > 0 else (batch if i == 0 else 8)
            for i, d in enumerate(arg.shape or [])
        ]
        if np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[arg.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[arg.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def ort_session(path: Path, device: str):
    """An ORT session on `cpu` or `cuda[:N]` (TF32 off: it would differ from fp32 by design)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if device == "cpu":
        providers = [CPU]
    else:
        device_id = int(device.split(":")[1]) if ":" in device else 0
        providers = [(CUDA, {"device_id": device_id, "use_tf32": 0}), CPU]
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def compare(want: list[np.ndarray], got: list[np.ndarray], rtol: float, atol: float):
    """(all outputs close, largest absolute difference)."""
    worst, ok = 0.0, True
    for w, g in zip(want, got, strict=True):
        if w.shape != g.shape:
            return False, float("inf")
        if np.issubdtype(w.dtype, np.floating):
            if w.size:
                worst = max(worst, float(np.max(np.abs(w.astype(np.float64) - g))))
            ok = ok and bool(np.allclose(g, w, rtol=rtol, atol=atol))
        else:
            ok = ok and bool(np.array_equal(g, w))
    return ok, worst


def mlp(path: Path, sizes=(1024, 4096, 4096, 1000), seed: int = 0) -> None:
    """A seeded fp32 MLP with a symbolic batch dimension: big enough that a GPU shows."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], ["y" if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "gpu_check_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def throughput_repository(workdir: Path) -> Path:
    """A repository holding the MLP alone, batching up to 32 rows."""
    repository = workdir / "throughput-models"
    if not (repository / "mlp" / "1" / "model.onnx").is_file():
        mlp(repository / "mlp" / "1" / "model.onnx")
        (repository / "mlp" / "config.json").write_text(json.dumps({"max_batch_size": 64}))
    return repository


# ---- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tapeserve_command() -> list[str]:
    """The `tapeserve` of this Python's environment."""
    script = Path(sys.executable).with_name("tapeserve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "serve.cli"]


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(url: str, alive: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if http_get(f"{url}/v2/health/ready", timeout=5)[0] == 200:
                return
        if not alive():
            raise StepFailed("the server exited before it became ready")
        time.sleep(0.5)
    raise StepFailed(f"{url} not ready after {timeout:.0f} s")


def children(pid: int) -> list[int]:
    """Child processes of `pid` (a Gunicorn master's are its workers), as the host numbers them."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    return []


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def worker_pids(self) -> list[int]:
        """The Gunicorn workers: children of the master (the process `tapeserve serve` became)."""
        return children(self.process.pid)

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def listening_url(log: Path, alive: Callable[[], bool], timeout: float = 300) -> str:
    """The URL Gunicorn's master says it listens at (bound to port 0: the kernel picks a free
    one, so no other server on the machine can take it between choosing and binding)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"Listening at: (http://\S+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if not alive():
            raise StepFailed("the server exited before it listened")
        time.sleep(0.1)
    raise StepFailed(f"the server did not listen within {timeout:.0f} s")


@contextlib.contextmanager
def serve(repository: Path, device: str, workers: int, workdir: Path) -> Iterator[Server]:
    """`tapeserve serve` on a loopback port the kernel picks, without gRPC (the check uses REST
    only; a fixed gRPC port would collide with any other server on the machine), until the
    block ends (then SIGTERM)."""
    fd, name = tempfile.mkstemp(prefix=f"serve-{device.replace(':', '')}-{workers}w-",
                                suffix=".log", dir=workdir)  # fmt: skip
    os.close(fd)
    log = Path(name)
    command = [
        *tapeserve_command(),
        "serve",
        "--model-repository",
        str(repository),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--grpc-port",
        "0",
        "--workers",
        str(workers),
        "--device",
        device,
        "--strict-readiness",
        "--control-socket",
        "",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPESERVE_")}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server("", process, log)
    try:
        try:
            server.url = listening_url(log, lambda: process.poll() is None)
            wait_ready(server.url, lambda: process.poll() is None)
        except StepFailed as exc:
            said = server.log_tail(1)  # e.g. why the device was refused
            message = f"{device}, {workers} worker(s): {exc}: {said}\n{server.log_tail()}"
            raise StepFailed(message) from None
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def bench(url: str, model: str, batch: int, seconds: float, workdir: Path) -> float:
    """Samples per second of `tapeserve bench` (binary tensors, 4 connections) at `batch`."""
    out = workdir / f"bench-{time.monotonic_ns()}.json"
    command = [
        *tapeserve_command(),
        "bench",
        model,
        "--url",
        url,
        "--binary",
        "--batch-size",
        str(batch),
        "--concurrency",
        "4",
        "--duration",
        str(seconds),
        "--warmup",
        str(min(1.0, seconds)),
        "--json-out",
        str(out),
        "--no-progress",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 10 + 120)
    if result.returncode != 0:
        raise StepFailed(f"tapeserve bench failed: {result.stderr.strip()[-500:]}")
    (level,) = json.loads(out.read_text())["results"]
    if level["errors"]:
        raise StepFailed(f"{level['errors']} request(s) failed: {level['first_error']}")
    return level["throughput"] * batch


# ---- NVML ---------------------------------------------------------------------------------------


def open_nvml():
    """The initialised pynvml module; StepFailed when NVML cannot be used."""
    try:
        import pynvml
    except ImportError:
        raise StepFailed("nvidia-ml-py is not installed") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise StepFailed(f"NVML is not available: {exc}") from None
    return pynvml


def gpu_memory_by_pid(nvml) -> dict[int, int]:
    """Bytes of GPU memory each process uses, over every GPU (NVML's compute processes)."""
    used: dict[int, int] = {}
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            used[process.pid] = used.get(process.pid, 0) + int(process.usedGpuMemory or 0)
    return used


def worker_memory(pids: list[int], by_pid: dict[int, int]) -> list[tuple[int, int]]:
    """(worker pid, GPU bytes) for each worker; raises when a worker holds no GPU memory."""
    if not pids:
        raise StepFailed("the server has no worker processes")
    rows = [(pid, by_pid.get(pid, 0)) for pid in pids]
    idle = [pid for pid, used in rows if not used]
    if idle:
        raise StepFailed(f"worker(s) {idle} hold no GPU memory: the models are not on the GPU")
    return rows


_SAMPLE = re.compile(r'^(\w+)\{gpu="(\d+)"\}\s+(\S+)$', re.M)


def gpu_gauges(metrics_text: str) -> dict[str, dict[str, float]]:
    """{gpu index: {series: value}} of the tapeserve_gpu_* samples in a /metrics exposition."""
    gauges: dict[str, dict[str, float]] = {}
    for name, gpu, value in _SAMPLE.findall(metrics_text):
        if name in GPU_SERIES:
            gauges.setdefault(gpu, {})[name] = float(value)
    return gauges


def check_gauges(gauges: dict[str, dict[str, float]], gpus: int) -> str:
    """A one-line summary of sane gauges for `gpus` GPUs; StepFailed naming what is wrong."""
    util, used, total = GPU_SERIES
    if sorted(gauges) != [str(i) for i in range(gpus)]:
        raise StepFailed(
            f"expected gpu=0..{gpus - 1} in /metrics, found {sorted(gauges) or 'none'}"
        )
    for gpu, series in sorted(gauges.items()):
        missing = [name for name in GPU_SERIES if name not in series]
        if missing:
            raise StepFailed(f"gpu {gpu}: {', '.join(missing)} missing from /metrics")
        if not 0 <= series[util] <= 1:
            raise StepFailed(f"gpu {gpu}: utilisation {series[util]} is not a 0-1 ratio")
        if not 0 < series[used] <= series[total]:
            raise StepFailed(f"gpu {gpu}: memory used {series[used]} of {series[total]}")
    return ", ".join(
        f"gpu {g}: {s[util]:.0%} busy, {s[used] / 2**20:,.0f}/{s[total] / 2**20:,.0f} MiB"
        for g, s in sorted(gauges.items())
    )


# ---- steps --------------------------------------------------------------------------------------


def step_cuda_libraries(opts: Options) -> str:
    sys.path.insert(0, str(HERE))
    import cuda_libraries

    report = cuda_libraries.check(require_driver=True)
    cuda_libraries.print_report(report)
    if not report.ok:
        raise StepFailed("; ".join(report.problems[:3]))
    return f"{len(report.checked)} libraries resolve, TensorRT " + (
        "shipped" if report.tensorrt_shipped else "not shipped"
    )


def step_provider(opts: Options) -> str:
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}: available {', '.join(ort.get_available_providers())}")
    if CUDA not in ort.get_available_providers():
        raise StepFailed("this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(sys.stderr):
            ort.preload_dlls()
    path = throughput_repository(opts.workdir) / "mlp" / "1" / "model.onnx"
    active = ort_session(path, opts.device).get_providers()
    print(f"session providers on {opts.device}: {', '.join(active)}")
    if active[0] != CUDA:
        raise StepFailed(
            f"the CUDA provider is not active (session providers: {', '.join(active)}): "
            "ONNX Runtime fell back to CPU"
        )
    return f"session on {opts.device} runs on {CUDA}"


def step_agreement(opts: Options) -> str:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(sys.stderr):
            ort.preload_dlls()
    print(f"| model | providers | max abs diff (rtol {opts.rtol}, atol {opts.atol}) | result |")
    print("|---|---|---:|---|")
    bad, count = [], 0
    for repository in model_repositories():
        for name, path in repository_models(repository):
            count += 1
            try:
                cpu = ort_session(path, "cpu")
                gpu = ort_session(path, opts.device)
                feeds = sample_inputs(cpu, batch=4)
                ok, diff = compare(cpu.run(None, feeds), gpu.run(None, feeds), opts.rtol, opts.atol)
                on_gpu = gpu.get_providers()[0] == CUDA
                verdict = "ok" if ok and on_gpu else ("not on GPU" if ok else "MISMATCH")
                print(f"| {name} | {gpu.get_providers()[0]} | {diff:.2e} | {verdict} |")
            except Exception as exc:  # one model's failure is reported, the others still run
                verdict = f"error: {exc}"
                print(f"| {name} | - | - | {verdict} |")
            if verdict != "ok":
                bad.append(f"{name} ({verdict})")
    for name, member, why in zoo_models(opts):
        if member is None:
            print(f"| zoo/{name} | - | - | not built: {why} |")
            continue
        count += 1
        try:
            gpu = ort_session(member.path, opts.device)
            feeds = member.inputs(batch=4)
            names = [o.name for o in gpu.get_outputs()]
            want = dict(zip(names, ort_session(member.path, "cpu").run(None, feeds), strict=True))
            got = dict(zip(names, gpu.run(None, feeds), strict=True))
            ok, diff = zoo_agrees(member, want, got)
            on_gpu = gpu.get_providers()[0] == CUDA
            verdict = "ok" if ok and on_gpu else ("not on GPU" if ok else "MISMATCH")
            print(f"| zoo/{name} | {gpu.get_providers()[0]} | {diff:.2e} (relative) | {verdict} |")
        except Exception as exc:
            verdict = f"error: {exc}"
            print(f"| zoo/{name} | - | - | {verdict} |")
        if verdict != "ok":
            bad.append(f"zoo/{name} ({verdict})")
    if not count:
        raise StepFailed("no models found")
    if bad:
        raise StepFailed(f"{len(bad)} of {count} model(s): {', '.join(bad)}")
    return f"{count} model(s) agree"


def throughput_table(results: dict[tuple[str, int, int], float | None], opts: Options) -> str:
    """Markdown: one row per batch, samples/s per (device, workers), GPU/CPU of the best."""
    columns = [(d, w) for d in ("cpu", opts.device) for w in opts.workers]
    head = " | ".join(f"{'CPU' if d == 'cpu' else 'GPU'} {w}w samples/s" for d, w in columns)
    lines = [f"| batch | {head} | GPU / CPU |", "|---:|" + "---:|" * (len(columns) + 1)]
    for batch in opts.batches:
        cells = [results.get((d, w, batch)) for d, w in columns]
        cpu = max(
            (v for (d, _), v in zip(columns, cells, strict=True) if d == "cpu" and v), default=None
        )
        gpu = max(
            (v for (d, _), v in zip(columns, cells, strict=True) if d != "cpu" and v), default=None
        )
        ratio = f"{gpu / cpu:.1f}x" if cpu and gpu else "-"
        shown = " | ".join(f"{v:,.0f}" if v else "failed" for v in cells)
        lines.append(f"| {batch} | {shown} | {ratio} |")
    return "\n".join(lines)


def step_throughput(opts: Options, memory: dict, gauges: dict) -> str:
    """Also records GPU memory per worker and /metrics of the GPU servers for steps 5 and 6."""
    repository = throughput_repository(opts.workdir)
    results: dict[tuple[str, int, int], float | None] = {}
    problems = []
    for device in ("cpu", opts.device):
        for workers in opts.workers:
            try:
                with serve(repository, device, workers, opts.workdir) as server:
                    for batch in opts.batches:
                        results[(device, workers, batch)] = bench(
                            server.url, "mlp", batch, opts.seconds, opts.workdir
                        )
                    if device != "cpu":
                        _observe_gpu_server(server, workers, memory, gauges)
            except StepFailed as exc:
                problems.append(str(exc).splitlines()[0])
                print(f"FAIL: {exc}")
    print(throughput_table(results, opts))
    print(
        f"(MLP 1024-4096-4096-1000 fp32, tapeserve bench --binary -c 4, {opts.seconds:g} s "
        f"per cell; {os.cpu_count()} CPUs)"
    )
    if problems:
        raise StepFailed("; ".join(problems))
    return f"{len(results)} cells measured"


def _observe_gpu_server(server: Server, workers: int, memory: dict, gauges: dict) -> None:
    try:
        nvml = open_nvml()
        memory[workers] = worker_memory(server.worker_pids(), gpu_memory_by_pid(nvml))
    except StepFailed as exc:
        memory[workers] = exc
    status, body = http_get(f"{server.url}/metrics")
    gauges[workers] = (
        body.decode(errors="replace")
        if status == 200
        else StepFailed(f"/metrics answered {status}")
    )


def step_memory(memory: dict) -> str:
    if not memory:
        raise StepFailed("no GPU server ran (see throughput)")
    print("| workers | worker pid | GPU memory MiB |")
    print("|---:|---:|---:|")
    problems = []
    for workers, rows in sorted(memory.items()):
        if isinstance(rows, StepFailed):
            problems.append(f"{workers} worker(s): {rows}")
            print(f"| {workers} | - | {rows} |")
            continue
        for pid, used in rows:
            print(f"| {workers} | {pid} | {used / 2**20:,.0f} |")
    if problems:
        raise StepFailed("; ".join(problems))
    worst = max(used for rows in memory.values() for _, used in rows)
    return f"largest worker {worst / 2**20:,.0f} MiB"


def step_gauges(gauges: dict) -> str:
    if not gauges:
        raise StepFailed("no GPU server ran (see throughput)")
    nvml = open_nvml()
    count = nvml.nvmlDeviceGetCount()
    summary = ""
    for _workers, text in sorted(gauges.items()):
        if isinstance(text, StepFailed):
            raise text
        summary = check_gauges(gpu_gauges(text), count)
    print(summary)
    return summary


def container_engine(preferred: str = "") -> tuple[str, list[str]]:
    """(engine, flags that give a container every GPU): podman (CDI) or docker (--gpus)."""
    for engine in [preferred] if preferred else ["podman", "docker"]:
        if shutil.which(engine):
            flags = ["--device", "nvidia.com/gpu=all"] if engine == "podman" else ["--gpus", "all"]
            return engine, flags
    raise StepFailed(
        "no podman or docker on PATH: install one with the NVIDIA Container Toolkit, "
        "or pass --no-container"
    )


def step_container(opts: Options) -> str:
    engine, gpu_flags = container_engine(opts.engine)
    image = opts.image
    if not image:
        image = "localhost/tapeserve:gpu-check-cuda"
        print(f"building {image} (VARIANT=cuda) with {engine}")
        build = subprocess.run(
            [engine, "build", "--build-arg", "VARIANT=cuda", "-t", image, str(ROOT)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if build.returncode != 0:
            raise StepFailed(f"{engine} build failed: {build.stderr.strip()[-800:]}")
    libraries = subprocess.run(
        [
            engine,
            "run",
            "--rm",
            *gpu_flags,
            "-v",
            f"{HERE / 'cuda_libraries.py'}:/check.py:ro",
            "--entrypoint",
            "python3",
            image,
            "/check.py",
            "--require-driver",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(libraries.stdout.strip())
    if libraries.returncode != 0:
        said = libraries.stdout.strip().splitlines() or libraries.stderr.strip().splitlines()
        raise StepFailed(f"CUDA libraries in {image}: {said[-1] if said else 'no output'}")
    # The container serves the bundled models and the throughput MLP, one worker per GPU.
    repository = opts.workdir / "container-models"
    if not repository.exists():
        shutil.copytree(BUNDLED, repository)
        shutil.copytree(throughput_repository(opts.workdir) / "mlp", repository / "mlp")
    port, name = free_port(), f"tapeserve-gpu-check-{os.getpid()}"
    started = subprocess.run(
        [engine, "run", "-d", "--name", name, *gpu_flags, "-p", f"127.0.0.1:{port}:8000",
         "-v", f"{repository}:/models:ro", "-e", f"TAPESERVE_DEVICE={opts.device}",
         "-e", "TAPESERVE_STRICT_READINESS=1", image],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if started.returncode != 0:
        raise StepFailed(f"{engine} run failed: {started.stderr.strip()[-500:]}")
    url = f"http://127.0.0.1:{port}"
    try:

        def inspect(field: str) -> str:
            out = subprocess.run([engine, "inspect", "-f", f"{{{{{field}}}}}", name],
                                 capture_output=True, text=True)  # fmt: skip
            return out.stdout.strip()

        wait_ready(url, lambda: inspect(".State.Running") == "true")
        served = 0
        for model, path in repository_models(BUNDLED):
            cpu = ort_session(path, "cpu")
            feeds = sample_inputs(cpu, batch=4)
            ok, diff = compare(cpu.run(None, feeds), v2_infer(url, model, feeds), opts.rtol,
                               opts.atol)  # fmt: skip
            print(f"container {model}: max |GPU - host CPU| = {diff:.2e} {'ok' if ok else 'NO'}")
            if not ok:
                raise StepFailed(f"{model}: the container's GPU outputs differ from the host CPU's")
            served += 1
        rates = {b: bench(url, "mlp", b, opts.seconds, opts.workdir) for b in opts.batches}
        print("| batch | container GPU samples/s |\n|---:|---:|")
        print("\n".join(f"| {b} | {rate:,.0f} |" for b, rate in rates.items()))
        workers = children(int(inspect(".State.Pid") or 0))
        memory = worker_memory(workers, gpu_memory_by_pid(open_nvml()))
        print("container workers' GPU memory: " + ", ".join(
            f"pid {pid} {used / 2**20:,.0f} MiB" for pid, used in memory))  # fmt: skip
        status, body = http_get(f"{url}/metrics")
        if status != 200:
            raise StepFailed(f"/metrics answered {status}")
        gauges = check_gauges(gpu_gauges(body.decode(errors="replace")), len(workers))
        print(f"container /metrics: {gauges}")
        return (
            f"{image} on {engine}: libraries complete, {served} model(s) agree, "
            f"{len(workers)} worker(s) on the GPU, {rates[max(rates)]:,.0f} samples/s at batch "
            f"{max(rates)}, gauges present"
        )
    finally:
        logs = subprocess.run([engine, "logs", name], capture_output=True, text=True)
        tail = (logs.stdout + logs.stderr).strip().splitlines()[-10:]
        print("container log (last lines):\n  " + "\n  ".join(tail))
        subprocess.run([engine, "rm", "-f", name], capture_output=True)


def v2_infer(url: str, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of a V2 JSON inference request, in the model's output order."""
    datatypes = {
        np.float32: "FP32",
        np.float64: "FP64",
        np.float16: "FP16",
        np.int64: "INT64",
        np.int32: "INT32",
        np.int8: "INT8",
        np.uint8: "UINT8",
        np.bool_: "BOOL",
    }
    body = {
        "inputs": [
            {
                "name": k,
                "shape": list(v.shape),
                "datatype": datatypes[v.dtype.type],
                "data": v.ravel().tolist(),
            }
            for k, v in feeds.items()
        ]
    }
    request = urllib.request.Request(
        f"{url}/v2/models/{model}/infer",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    return [np.asarray(o["data"]).reshape(o["shape"]) for o in answer["outputs"]]


# ---- driver -------------------------------------------------------------------------------------


def run_steps(steps: list[tuple[str, Callable[[], str]]]) -> list[tuple[str, StepResult]]:
    """Run every step in order; an exception is that step's FAIL, never the end of the run."""
    results = []
    for number, (name, step) in enumerate(steps, 1):
        print(f"\n== {number}. {name} ==", flush=True)
        start = time.monotonic()
        try:
            detail = step()
            result = StepResult(PASS, detail)
        except StepFailed as exc:
            result = StepResult(FAIL, str(exc).splitlines()[0])
        except StepSkipped as exc:
            result = StepResult(SKIP, str(exc))
        except Exception as exc:
            traceback.print_exc()
            result = StepResult(FAIL, f"{type(exc).__name__}: {exc}".splitlines()[0])
        if result.status == FAIL:
            print(f"FAIL: {result.detail}")
        print(f"({time.monotonic() - start:.1f} s)", flush=True)
        results.append((name, result))
    return results


def summary(results: list[tuple[str, StepResult]]) -> tuple[str, int]:
    """The summary table and the exit status (1 if any step failed)."""
    lines = ["| # | step | result | detail |", "|---:|---|---|---|"]
    for number, (name, result) in enumerate(results, 1):
        lines.append(f"| {number} | {name} | {result.status} | {result.detail[:160]} |")
    failed = sum(r.status == FAIL for _, r in results)
    verdict = (
        f"GPU CHECK FAILED: {failed} of {len(results)} step(s)"
        if failed
        else ("GPU CHECK PASSED: " + ", ".join(n for n, r in results if r.status == PASS))
    )
    return "\n".join(lines) + "\n\n" + verdict, 1 if failed else 0


def steps_for(opts: Options) -> list[tuple[str, Callable[[], str]]]:
    memory: dict = {}
    gauges: dict = {}

    def container() -> str:
        if not opts.container:
            raise StepSkipped("--no-container")
        return step_container(opts)

    return [
        ("CUDA libraries", lambda: step_cuda_libraries(opts)),
        ("CUDA provider", lambda: step_provider(opts)),
        ("CPU/GPU agreement", lambda: step_agreement(opts)),
        ("throughput", lambda: step_throughput(opts, memory, gauges)),
        ("GPU memory per worker", lambda: step_memory(memory)),
        ("NVML gauges in /metrics", lambda: step_gauges(gauges)),
        ("container", container),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tapeserve GPU check (see the module docstring)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N [cuda]")
    parser.add_argument("--image", default="", help="CUDA image for the container step [build]")
    parser.add_argument("--engine", default="", choices=["", "podman", "docker"])
    parser.add_argument("--no-container", action="store_true", help="skip the container step")
    args = parser.parse_args(argv)
    opts = Options(
        seconds=float(os.environ.get("TAPESERVE_GPU_CHECK_SECONDS", "3")),
        batches=tuple(
            int(b) for b in os.environ.get("TAPESERVE_GPU_CHECK_BATCHES", "1,8,32").split(",")
        ),
        zoo_size=os.environ.get("TAPESERVE_GPU_CHECK_ZOO", "small"),
        device=args.device,
        image=args.image,
        engine=args.engine,
        container=not args.no_container,
    )
    results = run_steps(steps_for(opts))
    table, status = summary(results)
    print("\n" + table)
    shutil.rmtree(opts.workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
