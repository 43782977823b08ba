"""config.json in Triton's field names: what is accepted, and the message for what is not."""

from __future__ import annotations

import json

import pytest

from serve.lifecycle.config import ConfigError, declared_specs, load_config, parse_config

PY = {"backend": "python",
      "input": [{"name": "X", "data_type": "TYPE_STRING", "dims": [1]}],
      "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2, 3]}]}  # fmt: skip


def test_python_model_defaults_to_tritons_max_batch_size_0() -> None:
    config = parse_config(PY)
    assert config.kind == "python" and config.max_batch_size == 0
    assert [(s.name, s.datatype, s.shape) for s in declared_specs(config, "output")] == [
        ("Y", "FP32", (2, 3))
    ]
    batched = parse_config({**PY, "max_batch_size": 8})
    assert declared_specs(batched, "input")[0].shape == (-1, 1)
    assert declared_specs(batched, "input")[0].datatype == "BYTES"


def test_triton_batching_and_instance_fields_set_tapeserves() -> None:
    groups = [{"count": 2, "kind": "KIND_CPU"}, {"count": 1}]
    delay = {"max_queue_delay_microseconds": 1500}
    config = parse_config({**PY, "dynamic_batching": delay, "instance_group": groups})
    assert config.max_queue_delay_ms == 1.5 and config.instance_count == 3


def test_onnx_output_may_only_name_a_label_file() -> None:
    config = parse_config({"output": [{"name": "output", "label_filename": "classes.txt"}]})
    assert config.kind == "onnx" and config.label_files() == {"output": "classes.txt"}
    assert config.max_batch_size == 64  # existing configs keep tapeserve's default


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**PY, "input": [{"name": "X", "data_type": "FP32", "dims": [1]}]},
         "input 'X': data_type must be one of TYPE_BOOL"),
        ({**PY, "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1], "shape": [1]}]},
         "input 'X': unknown key(s) shape"),
        ({**PY, "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [2],
                            "label_filename": "../etc/passwd"}]},
         "label_filename must be a file name in the model folder"),
        ({**PY, "platform": "ensemble"}, 'must not set "platform"'),
        ({"platform": "ensemble", "input": PY["input"], "output": PY["output"]},
         "ensemble_scheduling is allowed, and needed, only with"),
        ({"backend": "python", "output": PY["output"]}, 'must declare its "input" tensors'),
        ({"backend": "tensorflow"}, "backend must be one of onnxruntime, python"),
        ({**PY, "dynamic_batching": {"preferred_batch_size": [4]}}, "dynamic_batching must be"),
        ({**PY, "instance_group": [{"count": 1, "kind": "KIND_GPU"}]}, "only KIND_CPU"),
        ({"platform": "ensemble", **{k: PY[k] for k in ("input", "output")},
          "ensemble_scheduling": {"step": [{"model_name": "m", "input_map": {"a": 1},
                                            "output_map": {}}]}},
         "input_map must map the step model's tensor names"),
        ({"platform": "ensemble", **{k: PY[k] for k in ("input", "output")},
          "ensemble_scheduling": {"step": []}}, "step must be a non-empty list"),
    ],
)  # fmt: skip
def test_refused_with_a_reason(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert message in str(info.value)


def test_name_must_match_the_folder(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**PY, "name": "other"}))
    with pytest.raises(ConfigError, match="does not match the model folder"):
        load_config(tmp_path)


def test_step_model_version_as_protobuf_json_text() -> None:
    step = {"model_name": "m", "model_version": "-1", "input_map": {}, "output_map": {}}
    config = parse_config({"platform": "ensemble", **{k: PY[k] for k in ("input", "output")},
                           "ensemble_scheduling": {"step": [step]}})  # fmt: skip
    assert config.ensemble_scheduling["step"][0]["model_version"] == -1
