"""Device logic without a GPU: NVML and onnxruntime's provider list are faked at their boundaries
(tests/support/nvml/pynvml.py; `onnxruntime.get_available_providers`), everything above runs for
real - the probe, the refusals and their messages, `cuda:N`, per-model devices and provider options
from config.json, one worker per GPU, and the NVML gauges in a real server's /metrics.

onnxruntime itself is real: asked for CUDA on this machine it falls back to CPU (no libcuda), which
is exactly the silent fallback the server must refuse under `cuda` and announce under `auto`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from serve.lifecycle import runtime
from serve.lifecycle.config import ConfigError, parse_config
from serve.lifecycle.registry import ModelRegistry, State
from serve.settings import BUNDLED_REPOSITORY
from tests.serve import builders

FAKE_NVML = Path(__file__).resolve().parents[1] / "support" / "nvml"
CPU, CUDA, TRT = runtime.CPU, runtime.CUDA, runtime.TENSORRT


def _fake_nvml_module():
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML / "pynvml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def machine(monkeypatch):
    """`machine("gpus=2", providers=[...])`: this process sees that NVML and that provider list."""
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml_module())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(runtime.WORKER_GPU_VAR, raising=False)
    monkeypatch.setattr(runtime, "_cuda_failed_in_auto", False)

    def set_machine(nvml: str, providers=(TRT, CUDA, CPU)) -> runtime.GpuProbe:
        monkeypatch.setenv("TAPESERVE_FAKE_NVML", nvml)
        monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: list(providers))
        runtime.gpus.cache_clear()
        return runtime.gpus()

    yield set_machine
    runtime.gpus.cache_clear()


def test_the_probe_says_whether_the_driver_or_a_device_is_missing(machine, monkeypatch):
    missing = machine("error=12")
    assert missing.driver is None and "the NVIDIA driver is missing" in missing.problem
    assert "--gpus all" in missing.problem and "nvidia.com/gpu=all" in missing.problem
    assert "not loaded" in machine("error=9").problem
    assert "no permission" in machine("error=4").problem
    none = machine("gpus=0,driver=580.82.07")
    assert none.driver == "580.82.07" and none.devices == 0
    assert none.problem == "the NVIDIA driver (580.82.07) is loaded but no GPU device is present"
    assert machine("gpus=4").devices == 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    hidden = machine("gpus=4")
    assert hidden.devices == 0 and "CUDA_VISIBLE_DEVICES='' hides them all" in hidden.problem


@pytest.mark.parametrize(
    ("visible", "count", "expected"),
    [(None, 4, 4), ("", 4, 0), ("2", 4, 1), ("0,3", 4, 2), ("0,7,1", 4, 1), ("1,1", 4, 1),
     ("-1", 4, 0), ("GPU-8f6c,GPU-11aa", 4, 2), ("0,1,2", 2, 2)],
)  # fmt: skip
def test_cuda_visible_devices_is_read_as_cuda_reads_it(visible, count, expected):
    assert runtime.visible_gpus(count, visible) == expected


def test_device_cuda_is_refused_at_start_with_the_reason(machine):
    refusals = {
        "error=12": "device 'cuda' requested but the NVIDIA driver is missing",
        "gpus=0": "device 'cuda' requested but the NVIDIA driver (580.82.07) is loaded but no GPU",
    }
    for nvml, message in refusals.items():
        with pytest.raises(runtime.DeviceError, match=re.escape(message)):
            runtime.check_device("cuda", machine(nvml))
    two = machine("gpus=2")
    runtime.check_device("cuda:1", two)
    with pytest.raises(runtime.DeviceError, match=re.escape(
        "device 'cuda:2' requested but GPU 2 does not exist: 2 GPU(s) are visible "
        "(cuda:0..cuda:1)")):  # fmt: skip
        runtime.check_device("cuda:2", two)
    cpu_only = machine("gpus=2", providers=[CPU])
    with pytest.raises(runtime.DeviceError, match="no CUDA provider .*install onnxruntime-gpu"):
        runtime.check_device("cuda", cpu_only)
    for device in ("auto", "cpu"):
        runtime.check_device(device, machine("error=12"))  # never refused: they run on CPU


def test_one_worker_per_gpu_by_default(machine):
    assert runtime.default_workers("cuda", machine("gpus=4")) == 4
    assert runtime.default_workers("auto", machine("gpus=3")) == 3
    assert runtime.default_workers("cuda:2", machine("gpus=4")) == 1, "one GPU asked for"
    assert runtime.default_workers("auto", machine("error=12")) == 2, "CPU: two workers"
    assert runtime.default_workers("cpu", machine("gpus=4")) == 2
    assert runtime.default_workers("auto", machine("gpus=4", providers=[CPU])) == 2


def test_provider_options_and_tensorrt_reach_onnxruntime_as_it_takes_them(machine):
    machine("gpus=2")
    cuda = {"gpu_mem_limit": 2 * 2**30, "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": False}  # fmt: skip
    assert runtime.providers_for("cuda", 1, cuda) == [
        (CUDA, {"gpu_mem_limit": "2147483648", "arena_extend_strategy": "kSameAsRequested",
                "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": "0",
                "device_id": "1"}),
        CPU,
    ]  # fmt: skip
    assert runtime.providers_for("cuda:0", 1) == [(CUDA, {"device_id": "0"}), CPU], "cuda:N wins"
    with_trt = runtime.providers_for("cuda", 1, {}, {"trt_fp16_enable": True})
    assert with_trt == [
        (TRT, {"trt_fp16_enable": "1", "device_id": "1"}),
        (CUDA, {"device_id": "1"}),
        CPU,
    ]
    machine("gpus=2", providers=[CUDA, CPU])
    with pytest.raises(runtime.DeviceError, match="asks for TensorRT but .* no TensorRT provider"):
        runtime.providers_for("cuda", 0, {}, {})
    assert runtime.providers_for("cpu", 1, cuda, {}) == [CPU], "options apply on a GPU only"


def test_auto_falls_back_to_cpu_once_with_the_reason(machine, caplog):
    machine("error=12")
    with caplog.at_level(logging.WARNING, logger="tapeserve.runtime"):
        assert runtime.providers_for("auto") == [CPU]
        assert runtime.providers_for("auto") == [CPU]
    (warning,) = caplog.messages
    assert warning.startswith("device auto: the NVIDIA driver is missing")
    assert warning.endswith("; running on CPU")


def test_the_model_device_comes_from_the_model_first_then_the_server_then_the_worker(
    machine, monkeypatch
):
    resolve = runtime.resolve_device
    assert resolve("auto", None, None) == ("auto", 0)
    assert resolve("cuda", "cuda:1", None) == ("cuda", 1)
    assert resolve("cuda:2", None, 3) == ("cuda", 3), "the model's device_id beats the server's"
    assert resolve("cuda:2", None, None) == ("cuda", 2)
    assert resolve("auto", "cpu", 1) == ("cpu", 1)
    monkeypatch.setenv(runtime.WORKER_GPU_VAR, "1")
    assert resolve("cuda", None, None) == ("cuda", 1), "the worker's GPU"
    assert resolve("cuda:0", None, None) == ("cuda", 0), "--device cuda:N pins every worker"


def test_real_onnxruntime_falling_back_is_refused_under_cuda_and_warned_under_auto(
    machine, tmp_path, caplog
):
    """The driver is there (NVML says so) but the CUDA libraries are not: ORT falls back."""
    machine("gpus=1")
    path = builders.write_model(tmp_path, "m", builders.mlp((4, 2)))
    with pytest.raises(runtime.DeviceError, match=re.escape(
        "device 'cuda:0' requested but the CUDA provider is not active (session providers: "
        "CPUExecutionProvider)")):  # fmt: skip
        runtime.create_session(path, "cuda", 1)
    with caplog.at_level(logging.WARNING, logger="tapeserve.runtime"):
        session = runtime.create_session(path, "auto", 1)
    assert (session.provider, session.device) == (CPU, "cpu")
    assert "device auto: the CUDA provider did not start" in caplog.text


def test_per_model_device_and_options_through_the_registry(machine, tmp_path):
    """Each model loads on its own device: a CPU model serves while a CUDA one is refused."""
    machine("gpus=2")
    builders.write_model(tmp_path, "on_cpu", builders.mlp((4, 2)), config={"device": "cpu"})
    on_gpu1 = {"device": "cuda", "cuda": {"device_id": 1, "gpu_mem_limit": 2**30}}
    builders.write_model(tmp_path, "on_gpu1", builders.mlp((4, 2)), config=on_gpu1)
    builders.write_model(tmp_path, "on_gpu7", builders.mlp((4, 2)), config={"device": "cuda:7"})
    registry = ModelRegistry(tmp_path, device="auto", workers=1)
    registry.start().join(60)
    cpu = registry.models["on_cpu"].versions[1]
    assert (cpu.state, cpu.device) == (State.READY, "cpu")
    gpu1 = registry.models["on_gpu1"].versions[1]
    assert gpu1.state == State.UNAVAILABLE
    assert "device 'cuda:1' requested but the CUDA provider is not active" in gpu1.reason
    gpu7 = registry.models["on_gpu7"].versions[1]
    assert "GPU 7 does not exist: 2 GPU(s) are visible" in gpu7.reason


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"cuda": {"gpu_mem_limt": 1}}, "cuda: unknown option(s) gpu_mem_limt; known: "),
        ({"cuda": {"gpu_mem_limit": "2GB"}}, 'gpu_mem_limit must be an integer >= 1, got "2GB"'),
        ({"cuda": {"arena_extend_strategy": "grow"}}, "must be one of kNextPowerOfTwo, kSame"),
        ({"cuda": {"cudnn_conv_algo_search": "FAST"}}, "one of EXHAUSTIVE, HEURISTIC, DEFAULT"),
        ({"cuda": {"do_copy_in_default_stream": 1}}, "must be a boolean, got 1"),
        ({"cuda": {"device_id": -1}}, "cuda.device_id must be an integer >= 0, got -1"),
        ({"cuda": []}, "cuda must be an object of provider options"),
        ({"tensorrt": {"trt_fp32": True}}, "tensorrt: unknown option(s) trt_fp32"),
        ({"device": "cuda:1", "cuda": {"device_id": 0}},
         "these name different GPUs: device 1, cuda.device_id 0; set the GPU in one place"),
    ],
)  # fmt: skip
def test_provider_options_in_config_json_are_checked(raw, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(raw)


def test_provider_options_in_config_json_are_kept():
    config = parse_config({"device": "cuda:1", "tensorrt": True,
                           "cuda": {"device_id": 1, "use_tf32": False}})  # fmt: skip
    assert config.cuda == {"device_id": 1, "use_tf32": False} and config.tensorrt == {}
    assert parse_config({"tensorrt": False}).tensorrt is None
    assert json.loads(json.dumps(config.to_json()))["cuda"] == {"device_id": 1, "use_tf32": False}


def test_a_gpu_host_server_starts_one_worker_per_gpu_and_exports_the_gauges(tapeserve_server):
    """A real server on a host whose NVML reports two GPUs: two workers by default, one per GPU,
    the gauges of both GPUs in /metrics, and (no CUDA libraries here) the models on CPU."""
    env = {"PYTHONPATH": os.pathsep.join([str(FAKE_NVML), os.environ.get("PYTHONPATH", "")]),
           "TAPESERVE_FAKE_NVML": "gpus=2,driver=580.82.07"}  # fmt: skip
    srv = tapeserve_server(BUNDLED_REPOSITORY, workers=0, extra_args=["--device", "auto"], env=env)
    log = srv.log()
    assert "device auto, 2 worker(s)" in log
    slots = dict(re.findall(r"worker (\d+) runs its models on GPU (\d)", log))
    assert sorted(slots.values()) == ["0", "1"], log
    # A replacement worker takes the GPU its predecessor left.
    (pid,) = [p for p, gpu in slots.items() if gpu == "1"]
    os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(re.findall(r"runs its models on GPU", srv.log())) < 3:
        assert time.monotonic() < deadline, srv.log()
        time.sleep(0.1)
    replacement = re.findall(r"worker (\d+) runs its models on GPU (\d)", srv.log())[-1]
    assert replacement[0] != pid and replacement[1] == "1"
    metrics = srv.metrics()
    assert 'tapeserve_gpu_utilization_ratio{gpu="1"} 0.2' in metrics
    assert 'tapeserve_gpu_memory_total_bytes{gpu="0"} 1.7179869184e+10' in metrics
    assert "device auto: the CUDA provider did not start" in srv.log()


def test_a_server_without_the_driver_refuses_cuda_and_names_it(tmp_path):
    from tests.support.server import start_server

    env = {"PYTHONPATH": str(FAKE_NVML), "TAPESERVE_FAKE_NVML": "gpus=0,driver=580.82.07"}
    with pytest.raises(RuntimeError, match=re.escape(
        "tapeserve: device 'cuda' requested but the NVIDIA driver (580.82.07) is loaded but no "
        "GPU device is present")):  # fmt: skip
        start_server(BUNDLED_REPOSITORY, extra_args=["--device", "cuda"], env=env, timeout=60)
