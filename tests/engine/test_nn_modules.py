"""Module registration, state_dict, modes, Sequential and tracing scopes."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine import nn, tracing


class Block(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)
        self.scale = engine.Parameter(np.ones(width, dtype=np.float32))
        self.register_buffer("offset", engine.Tensor(np.zeros(width, dtype=np.float32)))
        self.register_buffer(
            "scratch", engine.Tensor(np.zeros(1, dtype=np.float32)), persistent=False
        )
        self.note = "plain attribute"

    def forward(self, x):
        return self.norm(self.fc(x)) * self.scale + self.offset


def test_attributes_register_parameters_buffers_and_submodules():
    block = Block()
    assert [n for n, _ in block.named_parameters()] == [
        "scale",
        "fc.weight",
        "fc.bias",
        "norm.weight",
        "norm.bias",
    ]
    assert [n for n, _ in block.named_buffers()] == [
        "offset",
        "scratch",
        "norm.running_mean",
        "norm.running_var",
        "norm.num_batches_tracked",
    ]
    assert all(isinstance(b, engine.Tensor) for b in block.buffers())
    assert [n for n, _ in block.named_children()] == ["fc", "norm"]
    assert block.note == "plain attribute"
    keys = list(block.state_dict())
    assert "scratch" not in keys and "offset" in keys and "norm.num_batches_tracked" in keys


def test_shared_parameter_is_listed_once():
    a = nn.Linear(3, 3)
    seq = nn.Sequential(a, nn.ReLU(), a)
    assert len(list(seq.parameters())) == 2


def test_state_dict_copies_and_load_state_dict_round_trips():
    engine.manual_seed(1)
    src, dst = Block(), Block()
    state = src.state_dict()
    state["fc.weight"][...] = 0  # a copy: the model is untouched
    assert np.abs(src.fc.weight.data).sum() > 0
    result = dst.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[key], value)
    assert dst.fc.weight.data.dtype == np.float32


def test_load_state_dict_reports_missing_unexpected_and_shape_errors():
    block = Block()
    state = block.state_dict()
    del state["fc.bias"]
    state["extra"] = np.zeros(2)
    with pytest.raises(KeyError, match=r"missing keys \['fc.bias'\].*unexpected keys \['extra'\]"):
        block.load_state_dict(state)
    result = block.load_state_dict(state, strict=False)
    assert result.missing_keys == ["fc.bias"] and result.unexpected_keys == ["extra"]
    bad = Block().state_dict()
    bad["fc.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(2, 2\).*\(4, 4\)"):
        block.load_state_dict(bad)


def test_train_eval_propagate_and_switch_dropout():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5))
    x = engine.Tensor(np.ones((4, 8), dtype=np.float32))
    engine.manual_seed(0)
    model.eval()
    assert not model[1].training
    np.testing.assert_array_equal(model(x).data, model(x).data)
    model.train()
    assert model[1].training
    assert (model(x).data == 0).any()


def test_zero_grad_and_backward_reach_every_parameter():
    block = Block()
    out = block(engine.Tensor(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)))
    (out * out).sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    block.zero_grad()
    assert all(p.grad is None for p in block.parameters())


def test_sequential_forms_add_indexing_and_repr():
    layers = [nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)]
    a, b = nn.Sequential(*layers), nn.Sequential(layers)
    c = nn.Sequential()
    for layer in layers:
        c.add(layer)
    for seq in (a, b, c):
        assert len(seq) == 3 and seq[0] is layers[0] and seq[-1] is layers[2]
        assert [n for n, _ in seq.named_parameters()] == [
            "0.weight",
            "0.bias",
            "2.weight",
            "2.bias",
        ]
    assert isinstance(a[:2], nn.Sequential) and len(a[:2]) == 2
    assert "(2): Linear(in_features=3, out_features=2" in repr(a)
    with pytest.raises(TypeError, match="Sequential takes engine.nn.Module layers"):
        nn.Sequential(lambda x: x)


def test_init_args_record_constructor_arguments():
    conv = nn.Conv2d(1, 8, 3, padding=1)
    assert conv.init_args["in_channels"] == 1 and conv.init_args["padding"] == 1
    assert conv.init_args["stride"] == 1 and conv.init_args["bias"] is True
    assert Block(width=6).init_args == {"width": 6}


def test_double_casts_floating_state_but_keeps_integer_buffers():
    bn = nn.BatchNorm1d(3).double()
    assert bn.weight.data.dtype == np.float64 and bn.running_var.data.dtype == np.float64
    assert bn.num_batches_tracked.data.dtype == np.int64


def test_call_enters_tracing_scope_with_qualified_names():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    outer = nn.Sequential(model, nn.Linear(4, 2))
    with tracing.trace() as tr:
        outer(engine.Tensor(np.ones((2, 4), dtype=np.float32)))
    scopes = {node.scope for node in tr.nodes}
    assert {"0.0", "0.1", "1"} <= scopes
    tail = outer[1:]  # a slice re-registers layer "1" as "0" of a new Sequential
    with tracing.trace() as tr:
        outer(engine.Tensor(np.ones((2, 4), dtype=np.float32)))
    assert {node.scope for node in tr.nodes} == scopes
    with tracing.trace() as tr:
        tail(engine.Tensor(np.ones((2, 4), dtype=np.float32)))
    assert {node.scope for node in tr.nodes} == {"0"}


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="BatchNorm2d expects a 4-D input"):
        nn.BatchNorm2d(3)(engine.Tensor(np.ones((2, 3), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\) got 5 channels"):
        nn.BatchNorm1d(3)(engine.Tensor(np.ones((2, 5), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"LSTM expects input \[batch, time, 3\]"):
        nn.LSTM(3, 2)(engine.Tensor(np.ones((2, 3), dtype=np.float32)))
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="dropout probability"):
        nn.Dropout(1.0)
    with pytest.raises(AttributeError, match="super\\(\\).__init__"):

        class Broken(nn.Module):
            def __init__(self):
                self.fc = nn.Linear(1, 1)

        Broken()


def test_functional_reexports_engine_functional():
    from engine import functional

    assert nn.functional.relu is functional.relu
    assert nn.functional.cross_entropy is functional.cross_entropy
