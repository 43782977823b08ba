"""Pipelines over gRPC: the classification extension, ensembles and Python models answer
tritonclient.grpc as they answer REST, since every front door goes through the inference core."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.pipelines import probes
from tests.support.server import RunningServer


@pytest.fixture(scope="module")
def client(pipelines_server: RunningServer):
    with grpcclient.InferenceServerClient(pipelines_server.grpc_url) as c:
        yield c


def _input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(array.shape), "FP32")
    inp.set_data_from_numpy(array)
    return inp


def test_classification_batched_and_unbatched(client) -> None:
    x = np.array([[0.1, 0.7, 0.05, 0.9, 0.2], [3, 1, 2, 0, 5]], dtype=np.float32)
    out = grpcclient.InferRequestedOutput("SCORES", class_count=3)
    top = client.infer("scores", [_input("X", x)], outputs=[out]).as_numpy("SCORES")
    assert top.tolist() == [
        [b"0.900000:3", b"0.700000:1:one", b"0.200000:4:four"],
        [b"5.000000:4:four", b"3.000000:0:zero", b"2.000000:2:two"],
    ]
    out = grpcclient.InferRequestedOutput("SCORES", class_count=2)
    flat = client.infer("scores_unbatched", [_input("X", x[0])], outputs=[out]).as_numpy("SCORES")
    assert flat.tolist() == [b"0.900000:3", b"0.700000:1:one"]


def test_ensemble_and_its_failing_step(client) -> None:
    a = np.array([probes.A], dtype=np.float32)
    b = np.array([probes.B], dtype=np.float32)
    result = client.infer("ens_two", [_input("A", a), _input("B", b)])
    assert result.as_numpy("DOUBLED_SUM").tolist() == [[3, 5, 7, 9]]
    bad = np.array([[2, 0, 0, 0]], dtype=np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("ens_fail", [_input("A", bad), _input("B", np.zeros_like(bad))])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "in ensemble 'ens_fail', step 1:raiser failed: X[0] == 2 is refused" in str(info.value)


def test_python_model_crash_is_internal_and_the_next_call_served(client) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("crasher", [_input("X", np.array([[1, 0, 0, 0]], np.float32))])
    assert info.value.status() == "StatusCode.INTERNAL"
    after = client.infer("crasher", [_input("X", np.array([[3, 0, 0, 0]], np.float32))])
    assert after.as_numpy("Y").tolist() == [[4, 1, 1, 1]]
