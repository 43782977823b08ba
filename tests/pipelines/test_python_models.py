"""Python models (Triton's Python backend) on a real server: the same answers as a real Triton on
the same model.py files where Triton's are what clients depend on, and isolation where Triton
has none (a crash or a hang leaves the model serving)."""

from __future__ import annotations

import concurrent.futures
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from tests.pipelines import probes
from tests.pipelines.conftest import TRITON, build_repository
from tests.support.server import RunningServer

#: Probes whose whole answer (status and body) equals Triton's.
SAME_AS_TRITON = [
    "add_sub metadata",
    "add_sub infer",
    "raiser error response",
    "raiser ok",
    "bls add_sub",
]


@pytest.fixture(scope="module")
def answers(pipelines_server: RunningServer) -> dict:
    return probes.probe_requests(pipelines_server.url)


@pytest.mark.parametrize("probe", SAME_AS_TRITON)
def test_same_answer_as_triton(answers: dict, probe: str) -> None:
    assert answers[probe] == TRITON[probe]


def test_execute_raising_fails_the_call_with_the_exception_as_triton_words_it(answers) -> None:
    ours, triton = answers["raiser raises"], TRITON["raiser raises"]
    assert ours["status"] == triton["status"] == 500
    for text in (
        "Failed to process the request(s) for model 'raiser",
        "message: ValueError: X[0] == 1 is not allowed",
        "At:\n",
        "/raiser/1/model.py(13): execute",
    ):
        assert text in ours["body"]["error"] and text in triton["body"]["error"]


def test_wrong_number_of_responses_is_an_error_for_every_request(answers) -> None:
    ours, triton = answers["wrong_count"], TRITON["wrong_count"]
    assert ours["status"] == triton["status"] == 500
    expected = "InferenceRequest(s) size is:1, and InferenceResponse(s) size is:0"
    assert expected in ours["body"]["error"] and expected in triton["body"]["error"]


def test_bls_error_reaches_the_calling_model(answers) -> None:
    ours = answers["bls unknown model"]
    assert ours["status"] == TRITON["bls unknown model"]["status"] == 500
    assert "TritonModelException" in ours["body"]["error"] and "'nope'" in ours["body"]["error"]


def test_requests_reach_execute_in_batches(answers) -> None:
    assert answers["add_sub concurrent ok"]
    assert answers["add_sub concurrent max requests per execute"] > 1
    assert TRITON["add_sub concurrent max requests per execute"] > 1


def test_initialize_args_are_tritons(pipelines_server: RunningServer) -> None:
    config = pipelines_server.get("/v2/models/add_sub/config").json()
    assert config["platform"] == "python" and config["backend"] == "python"
    assert config["max_batch_size"] == 8


def test_import_and_initialize_errors_make_the_model_unavailable(pipelines_server) -> None:
    rows = {r["name"]: r for r in pipelines_server.post("/v2/repository/index").json()}
    assert rows["import_error"]["state"] == "UNAVAILABLE"
    assert rows["import_error"]["reason"] == (
        "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"
    )
    assert rows["init_error"]["reason"] == (
        "RuntimeError: cannot initialize: the weights file is missing"
    )
    assert TRITON["load"]["import_error"]["status"] == 400  # Triton refuses it too
    response = pipelines_server.post("/v2/models/import_error/infer", json={"inputs": []})
    assert response.status_code == 503


def test_warm_up_samples_must_run(pipelines_server) -> None:
    rows = {r["name"]: r for r in pipelines_server.post("/v2/repository/index").json()}
    assert rows["raiser_warm_good"]["state"] == "READY"
    assert rows["raiser_warm_bad"]["state"] == "UNAVAILABLE"
    assert rows["raiser_warm_bad"]["reason"].startswith("RuntimeError: warm-up sample 0 failed: ")
    assert "ValueError: X[0] == 1 is not allowed" in rows["raiser_warm_bad"]["reason"]


def _x(first: float) -> list[dict]:
    return [probes.fp32("X", [[first, 0, 0, 0]])]


def test_crash_answers_an_error_and_the_next_request_is_served(pipelines_server) -> None:
    url = pipelines_server.url
    crashed = probes.infer(url, "crasher", _x(1))
    assert crashed["status"] == 500
    assert "process ended" in crashed["body"]["error"]
    assert "exited with status 3" in crashed["body"]["error"]
    assert probes.infer(url, "double", [probes.fp32("X", [probes.A])])["status"] == 200
    after = probes.infer(url, "crasher", _x(3))
    assert after["status"] == 200 and after["body"]["outputs"][0]["data"] == [4, 1, 1, 1]
    # Triton 2.51 keeps answering "Stub process 'crasher_0' is not healthy." after a crash:
    assert TRITON["crasher after crash"]["status"] == 500


def test_hang_past_the_deadline_answers_504_and_the_model_serves_again(pipelines_server) -> None:
    url = pipelines_server.url
    started = time.monotonic()
    doc = {"inputs": _x(1), "parameters": {"timeout": 1_500_000}}
    hung = requests.post(f"{url}/v2/models/hanger/infer", json=doc, timeout=30)
    assert hung.status_code == 504, hung.text
    assert "did not return before the request's deadline" in hung.json()["error"]
    assert time.monotonic() - started < 10
    assert probes.infer(url, "hanger", _x(3))["status"] == 200
    assert TRITON["hanger hangs"]["status"] is None  # Triton: no answer at all


def test_hang_does_not_block_other_models(pipelines_server) -> None:
    url = pipelines_server.url
    doc = {"inputs": _x(1), "parameters": {"timeout": 3_000_000}}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        hung = pool.submit(requests.post, f"{url}/v2/models/hanger/infer", json=doc, timeout=30)
        time.sleep(0.3)
        started = time.monotonic()
        assert probes.infer(url, "double", [probes.fp32("X", [probes.A])])["status"] == 200
        assert time.monotonic() - started < 2
        assert hung.result().status_code == 504


def test_leak_past_the_memory_limit_answers_an_error_then_serves(pipelines_server) -> None:
    """256 MiB kept per call under a 1 GiB limit: the call that cannot allocate fails alone,
    the process is replaced, the next call is served."""
    url = pipelines_server.url
    statuses = [probes.infer(url, "leaker", [probes.fp32("X", [probes.A])]) for _ in range(6)]
    failed = [s for s in statuses if s["status"] != 200]
    assert failed, statuses
    assert all("MemoryError" in s["body"]["error"] for s in failed)
    assert statuses[-1]["status"] == 200 or statuses[-2]["status"] == 200
    assert probes.infer(url, "double", [probes.fp32("X", [probes.A])])["status"] == 200


def test_tritonclient_binary_bytes_and_classification(pipelines_server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(pipelines_server.url.removeprefix("http://"))
    x = np.array([[0.1, 0.7, 0.05, 0.9, 0.2], [3, 1, 2, 0, 5]], dtype=np.float32)
    inp = httpclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("SCORES", binary_data=True, class_count=2)
    result = client.infer("scores", [inp], outputs=[out]).as_numpy("SCORES")
    assert result.tolist() == [[b"0.900000:3", b"0.700000:1:one"],
                               [b"5.000000:4:four", b"3.000000:0:zero"]]  # fmt: skip


def test_python_models_are_refused_without_the_flag(tapeserve_server, tmp_path) -> None:
    server = tapeserve_server(build_repository(tmp_path))
    rows = {r["name"]: r for r in server.post("/v2/repository/index").json()}
    assert rows["add_sub"]["state"] == "UNAVAILABLE"
    assert "--allow-python-models" in rows["add_sub"]["reason"]
    assert rows["ens_two"]["state"] == "UNAVAILABLE"  # its steps are Python models
    assert rows["onnx_pair"]["state"] == "READY" and rows["digits"]["state"] == "READY"
    assert probes.infer(server.url, "add_sub", [probes.fp32("INPUT0", [probes.A]),
                        probes.fp32("INPUT1", [probes.B])])["status"] == 503  # fmt: skip
    assert "python model" not in server.log()


def test_a_killed_worker_leaves_no_model_process_behind(tapeserve_server, tmp_path) -> None:
    """The worker dies while its Python model hangs: the model's process ends too, and the
    replacement worker serves the model again."""
    import os
    import re
    import signal

    server = tapeserve_server(build_repository(tmp_path), extra_args=["--allow-python-models"])
    line = next(ln for ln in server.log().splitlines() if "python model hanger" in ln)
    worker, child = (int(p) for p in re.search(r"\[(\d+)\] .*process (\d+) ready", line).groups())
    doc = {"inputs": _x(1), "parameters": {"timeout": 60_000_000}}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{server.url}/v2/models/hanger/infer", json=doc,
                              timeout=60)  # fmt: skip
        time.sleep(0.5)
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(child):
            time.sleep(0.1)
        assert not _running(child), "the model's process outlived its worker"
        with pytest.raises(requests.RequestException):
            pending.result()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = probes.infer(server.url, "hanger", _x(3))
        if answer["status"] == 200:
            break
        time.sleep(0.5)
    assert answer["status"] == 200


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_process_killed_while_idle_is_replaced_before_the_next_request(pipelines_server) -> None:
    import os
    import re
    import signal

    url = pipelines_server.url
    assert probes.infer(url, "double", [probes.fp32("X", [probes.A])])["status"] == 200
    pids = re.findall(r"python model double version 1 instance 0: process (\d+) ready",
                      pipelines_server.log())  # fmt: skip
    os.kill(int(pids[-1]), signal.SIGKILL)
    time.sleep(0.2)
    answer = probes.infer(url, "double", [probes.fp32("X", [probes.A])])
    assert answer["status"] == 200, answer
    assert "the process ended while idle" in pipelines_server.log()


def test_a_new_version_replaces_the_process_of_the_old(tapeserve_server, tmp_path) -> None:
    """Poll mode: version 2 of a Python model takes over, and version 1's process is finalized
    and ends once its requests are answered (no process left behind per reload)."""
    import re
    import shutil

    from tests.pipelines.conftest import HERE

    shutil.copytree(HERE / "models" / "double", tmp_path / "double")
    server = tapeserve_server(tmp_path, extra_args=["--allow-python-models", "--model-control-mode",
                                                    "poll", "--poll-interval", "0.2"])  # fmt: skip
    x = [probes.fp32("X", [probes.A])]
    assert probes.infer(server.url, "double", x)["body"]["outputs"][0]["data"] == [2, 4, 6, 8]
    (old,) = re.findall(r"double version 1 instance 0: process (\d+) ready", server.log())
    staged = tmp_path / ".staging"
    staged.mkdir()
    source = (HERE / "models" / "double" / "1" / "model.py").read_text()
    (staged / "model.py").write_text(source.replace("x * 2", "x * 3"))
    staged.rename(tmp_path / "double" / "2")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = probes.infer(server.url, "double", x)
        if answer["body"]["outputs"][0]["data"] == [3, 6, 9, 12]:
            break
        time.sleep(0.2)
    assert answer["body"]["outputs"][0]["data"] == [3, 6, 9, 12]
    while time.monotonic() < deadline and _running(int(old)):
        time.sleep(0.2)
    assert not _running(int(old)), "version 1's process was left running"
