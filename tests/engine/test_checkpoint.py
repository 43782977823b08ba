"""Checkpoints: .npz + JSON round trip, rebuilding models, hashes, and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine
from engine import checkpoint, nn, optim
from engine.data import DataLoader, TensorDataset
from engine.train import fit


class TwoTower(nn.Module):
    """A custom module rebuilt by import path plus kwargs."""

    def __init__(self, width: int, classes: int = 3, head: nn.Module | None = None) -> None:
        super().__init__()
        self.left = nn.Linear(4, width)
        self.right = nn.Sequential(nn.Linear(4, width), nn.Tanh())
        self.head = head if head is not None else nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.left(x).relu() + self.right(x))


def _x(n=6, seed=0):
    return engine.Tensor(np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32))


def _same_outputs(a: nn.Module, b: nn.Module, x) -> None:
    a.eval()
    b.eval()
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_sequential_reloads_from_the_checkpoint_alone(tmp_path):
    engine.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.1), nn.Linear(16, 3),
    )  # fmt: skip
    model(
        engine.Tensor(np.random.default_rng(1).random((5, 1, 4, 4), dtype=np.float32))
    )  # BN stats
    desc = checkpoint.save(tmp_path / "ck", model, input_shape=(1, 4, 4), labels=["a", "b", "c"],
                           input_description="pixels in [0, 1]", meta={"note": "x"})  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["checkpoint.json", "weights.npz"]
    on_disk = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    assert on_disk == json.loads(json.dumps(desc))
    assert on_disk["model"]["class"] == "engine.nn.container:Sequential"
    assert on_disk["model"]["layers"][0]["kwargs"]["padding"] == 1
    assert on_disk["input"] == {
        "shape": [1, 4, 4],
        "dtype": "float32",
        "description": "pixels in [0, 1]",
    }
    assert on_disk["labels"] == ["a", "b", "c"] and on_disk["meta"] == {"note": "x"}
    assert len(on_disk["weights_sha256"]) == 64
    loaded = checkpoint.load(tmp_path / "ck")
    assert isinstance(loaded.model, nn.Sequential) and len(loaded.model) == 7
    assert loaded.input_shape == (1, 4, 4) and loaded.labels == ["a", "b", "c"]
    x = engine.Tensor(np.random.default_rng(2).random((3, 1, 4, 4), dtype=np.float32))
    _same_outputs(model, loaded.model, x)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(loaded.model.state_dict()[key], value)
        assert loaded.model.state_dict()[key].dtype == value.dtype


def test_custom_module_reloads_by_import_path_with_nested_module_kwargs(tmp_path):
    engine.manual_seed(1)
    model = TwoTower(5, head=nn.Sequential(nn.Linear(5, 2)))
    checkpoint.save(tmp_path, model)
    spec = checkpoint.describe(tmp_path)["model"]
    assert spec["class"] == f"{__name__}:TwoTower"
    assert spec["kwargs"]["width"] == 5 and "__module__" in spec["kwargs"]["head"]
    _same_outputs(model, checkpoint.load(tmp_path).model, _x())


def test_float64_model_reloads_as_float64(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2)).double()
    checkpoint.save(tmp_path, model)
    assert checkpoint.load(tmp_path).model[0].weight.data.dtype == np.float64


def test_weights_hash_is_content_based_and_verified(tmp_path):
    engine.manual_seed(2)
    a = nn.Sequential(nn.Linear(4, 3))
    b = nn.Sequential(nn.Linear(4, 3))
    b.load_state_dict(a.state_dict())
    assert checkpoint.weights_hash(a.state_dict()) == checkpoint.weights_hash(b.state_dict())
    b[0].bias.data[0] += 1e-3
    assert checkpoint.weights_hash(a.state_dict()) != checkpoint.weights_hash(b.state_dict())
    checkpoint.save(tmp_path, a)
    np.savez(tmp_path / "weights.npz", **b.state_dict())  # tampered weights
    with pytest.raises(
        checkpoint.CheckpointError, match="do not match the recorded weights_sha256"
    ):
        checkpoint.load(tmp_path)


def test_no_pickle_and_clear_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.json is missing"):
        checkpoint.load(tmp_path)
    model = nn.Sequential(nn.Linear(4, 3))
    checkpoint.save(tmp_path, model)
    with open(tmp_path / "weights.npz", "wb") as f:  # an object array needs pickle to load
        np.savez(f, **{"0.weight": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(checkpoint.CheckpointError, match="cannot read"):
        checkpoint.load(tmp_path, verify_hash=False)
    desc = json.loads((tmp_path / "checkpoint.json").read_text())
    desc["model"] = {"class": "os:system", "kwargs": {"command": "true"}}
    (tmp_path / "checkpoint.json").write_text(json.dumps(desc))
    with pytest.raises(checkpoint.CheckpointError, match="not an engine.nn.Module subclass"):
        checkpoint.build_model(desc["model"])
    checkpoint.save(tmp_path / "good", model)
    with pytest.raises(checkpoint.CheckpointError, match="missing keys"):
        checkpoint.load(tmp_path / "good", model=nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3)))


def test_unrecordable_constructor_argument_is_an_error(tmp_path):
    class Holder(nn.Module):
        def __init__(self, table):
            super().__init__()
            self.table = table

    with pytest.raises(checkpoint.CheckpointError, match="cannot record"):
        checkpoint.save(tmp_path, Holder(object()))


def _training_setup(seed=0):
    engine.manual_seed(seed)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    opt = optim.Adam(model.parameters(), lr=0.01)
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, seed=7)
    return model, opt, sched, loader


def test_resume_from_checkpoint_follows_the_uninterrupted_trajectory(tmp_path):
    full_model, opt, sched, loader = _training_setup()
    full = fit(full_model, opt, loader, epochs=6, scheduler=sched, progress=False)

    model, opt, sched, loader = _training_setup()
    fit(model, opt, loader, epochs=3, scheduler=sched, progress=False)
    checkpoint.save(tmp_path, model, opt, scheduler=sched, epoch=3)
    assert (tmp_path / "optimizer.npz").is_file()
    engine.manual_seed(12345)  # whatever happened in between
    fresh, fresh_opt, fresh_sched, fresh_loader = _training_setup(seed=99)
    ck = checkpoint.load(tmp_path, fresh, fresh_opt, scheduler=fresh_sched, restore_rng=True)
    assert ck.epoch == 3
    resumed = fit(fresh, fresh_opt, fresh_loader, epochs=6, scheduler=fresh_sched,
                  start_epoch=ck.epoch, progress=False)  # fmt: skip
    assert [r["epoch"] for r in resumed.epochs] == [3, 4, 5]
    for a, b in zip(full.epochs[3:], resumed.epochs, strict=True):
        assert a["loss"] == b["loss"] and a["lr"] == b["lr"]
    for key, value in full_model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[key], value, err_msg=key)


def test_optimizer_class_mismatch_is_refused(tmp_path):
    model, opt, _, _ = _training_setup()
    checkpoint.save(tmp_path, model, opt)
    with pytest.raises(checkpoint.CheckpointError, match="holds engine.optim.adam:Adam state"):
        checkpoint.load(tmp_path, model, optim.SGD(model.parameters(), lr=0.1))


class Tagger(nn.Module):
    """Embedding -> LSTM -> Linear over the time steps (a custom module with an LSTM)."""

    def __init__(self, vocab: int, hidden: int, tags: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 6)
        self.lstm = nn.LSTM(6, hidden, num_layers=2)
        self.head = nn.Linear(hidden, tags)

    def forward(self, tokens):
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


def test_named_sequential_and_lstm_model_round_trip(tmp_path):
    from collections import OrderedDict

    engine.manual_seed(4)
    named = nn.Sequential(OrderedDict(fc=nn.Linear(4, 3), act=nn.GELU(), out=nn.Linear(3, 2)))
    checkpoint.save(tmp_path / "named", named)
    loaded = checkpoint.load(tmp_path / "named").model
    assert [n for n, _ in loaded.named_children()] == ["fc", "act", "out"]
    _same_outputs(named, loaded, _x())

    tagger = Tagger(vocab=11, hidden=5, tags=3)
    checkpoint.save(tmp_path / "tagger", tagger)
    again = checkpoint.load(tmp_path / "tagger").model
    tokens = engine.Tensor(np.array([[1, 4, 10, 0], [3, 3, 2, 7]]))
    _same_outputs(tagger, again, tokens)
    assert "lstm.weight_hh_l1" in again.state_dict()
