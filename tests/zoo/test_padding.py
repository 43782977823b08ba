"""The BERT-shaped encoder (transformers, exported by torch.onnx; and after onnxruntime's
transformer optimizer) served with `pad_variable_length_inputs`: concurrent requests of mixed
sequence lengths share padded batches, and each answer equals onnxruntime run on that request
alone (and the torch model)."""

from __future__ import annotations

import concurrent.futures
import json
import shutil

import numpy as np
import pytest

from modelzoo.model import run_onnxruntime
from tests.serve.test_batching import counts
from tests.support.server import start_server
from tests.zoo.test_serving import _v2_binary, _v2_json

#: model folder -> (zoo member, config): the cost model decides; length buckets decide.
SERVED = {
    "bert_padded": ("bert", {}),
    "bert_optimized_buckets": ("bert_optimized", {"padding_buckets": [16, 40]}),
}


@pytest.fixture(scope="module")
def padded_bert(zoo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("zoo-padding")
    members = {}
    for folder, (name, extra) in SERVED.items():
        members[folder] = zoo(name)
        shutil.copytree(members[folder].directory, repo / folder)
        batching = {"pad_variable_length_inputs": True, "max_queue_delay_microseconds": 5000}
        config = {"max_batch_size": 16, "dynamic_batching": {**batching, **extra}}
        (repo / folder / "config.json").write_text(json.dumps(config))
    server = start_server(repo, workers=1, threads=16, timeout=180)
    try:
        yield server, members
    finally:
        server.stop()


@pytest.mark.parametrize("folder", list(SERVED))
def test_mixed_lengths_share_batches_and_each_answer_is_its_own(padded_bert, folder):
    server, members = padded_bert
    member = members[folder]
    # one or two rows, 3-60 tokens, each row right-padded by its client as a tokenizer does
    requests = [
        member.inputs(batch=1 + i % 2, seed=i, sequence=3 + (i * 11) % 58) for i in range(24)
    ]
    expected = [run_onnxruntime(member.path, feeds) for feeds in requests]

    def ask(i: int) -> dict[str, np.ndarray]:
        if i % 2:
            return _v2_binary(server, folder, requests[i], member.outputs)
        return _v2_json(server, folder, requests[i])

    before = counts(server, folder)
    for _ in range(2):
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(ask, range(len(requests))))
        for feeds, want, got in zip(requests, expected, answers, strict=True):
            for name in member.outputs:
                assert got[name].shape == want[name].shape, name
            member.check(want, got)
            member.check(member.reference(feeds), got)
    after = counts(server, folder)
    assert after[1] - before[1] == 2 * sum(f["input_ids"].shape[0] for f in requests)
    assert after[0] - before[0] < 0.75 * 2 * len(requests)  # mixed lengths did share runs


def test_config_shows_padding(padded_bert):
    server, _ = padded_bert
    config = server.get("/v2/models/bert_optimized_buckets/config").json()["dynamic_batching"]
    assert config["pad_variable_length_inputs"] is True
    assert config["padding_buckets"] == [16, 40]
