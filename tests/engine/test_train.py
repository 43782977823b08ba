"""fit(): progress, validation, JSON-lines and TensorBoard logs; digits recipes reach accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import engine
from engine import checkpoint, nn, optim, recipes
from engine.data import DataLoader, TensorDataset
from engine.datasets import load_digits
from engine.train import evaluate, fit
from tests.support.system import require_module


def _blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    centers = np.array([[2, 0], [-2, 0], [0, 2.5]], dtype=np.float32)
    x = centers[y] + rng.standard_normal((n, 2)).astype(np.float32) * 0.5
    return TensorDataset(x, y)


def _setup():
    engine.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return (
        model,
        opt,
        DataLoader(_blobs(), 16, shuffle=True, seed=1),
        DataLoader(_blobs(seed=1), 64),
    )


def test_fit_learns_validates_and_logs_json_lines(tmp_path):
    model, opt, train_loader, val_loader = _setup()
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    log = tmp_path / "logs" / "metrics.jsonl"
    history = fit(model, opt, train_loader, val_loader, epochs=4, scheduler=sched, log_path=log,
                  progress=False)  # fmt: skip
    assert len(history) == 4
    assert history["epoch"] == [0, 1, 2, 3]
    assert history["lr"] == pytest.approx([0.1, 0.1, 0.05, 0.05])
    assert history["loss"][-1] < history["loss"][0]
    assert history.last["val_accuracy"] > 0.9
    assert history.last["samples_per_s"] > 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == history.epochs
    assert set(lines[0]) >= {
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
    }
    fit(model, opt, train_loader, epochs=1, log_path=log, progress=False)
    assert len(log.read_text().splitlines()) == 5  # appended


def test_evaluate_matches_a_manual_computation_and_restores_mode():
    model, _, _, val_loader = _setup()
    model.train()
    result = evaluate(model, val_loader)
    assert model.training
    x, y = _blobs(seed=1).arrays
    model.eval()
    logits = model(engine.Tensor(x)).data
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))
    assert result["loss"] == pytest.approx(float(nn.functional.cross_entropy(
        engine.Tensor(logits), engine.Tensor(y)).item()), rel=1e-5)  # fmt: skip


def test_regression_loss_has_no_accuracy():
    engine.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    y = x @ np.array([[1.0], [2.0], [-1.0]], dtype=np.float32)
    model = nn.Linear(3, 1)
    history = fit(model, optim.Adam(model.parameters(), lr=0.05),
                  DataLoader(TensorDataset(x, y), 8), epochs=3, loss_fn=nn.functional.mse_loss,
                  progress=False, clip_grad_norm=1.0)  # fmt: skip
    assert "accuracy" not in history.last and history["loss"][-1] < history["loss"][0]


def test_progress_bar_shows_loss_accuracy_and_throughput(capsys):
    model, opt, train_loader, _ = _setup()
    fit(model, opt, train_loader, epochs=1, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "acc=" in err and "samples/s=" in err


def _read_events(folder):
    """Every Event in the TensorBoard files in `folder` (TFRecord framing, tensorboardX protos)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    events = []
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data = file.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack_from("<Q", data, pos)
            pos += 12  # length + its crc
            events.append(Event.FromString(data[pos : pos + length]))
            pos += length + 4  # payload + its crc
    return events


def test_tensorboard_scalars_and_weight_histograms(tmp_path):
    require_module("tensorboardX")
    model, opt, train_loader, val_loader = _setup()
    fit(model, opt, train_loader, val_loader, epochs=2, tensorboard_dir=tmp_path, progress=False)
    scalars, histograms = {}, {}
    for event in _read_events(tmp_path):
        for value in event.summary.value:
            if value.HasField("histo"):
                histograms.setdefault(value.tag, []).append(value.histo)
            else:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "train/lr"} <= set(scalars)
    assert [step for step, _ in scalars["val/accuracy"]] == [0, 1]
    assert scalars["train/lr"][0][1] == pytest.approx(0.1)
    assert {"weights/0.weight", "weights/2.bias", "grads/0.weight"} <= set(histograms)
    assert histograms["weights/0.weight"][0].num == 32  # 16x2 weights


@pytest.mark.slow
@pytest.mark.parametrize(("name", "threshold"), [("digits-mlp", 0.97), ("digits-cnn", 0.98)])
def test_digits_recipe_reaches_accuracy_and_saves_an_exportable_checkpoint(
    tmp_path, name, threshold
):
    result = recipes.run(name, out=tmp_path / name, seed=0, progress=False)
    assert result.test_accuracy >= threshold, result.history.last
    ck = checkpoint.load(tmp_path / name)
    desc = ck.description
    assert desc["labels"] == [str(d) for d in range(10)]
    assert desc["input"]["shape"] == ([1, 8, 8] if name == "digits-cnn" else [64])
    assert "divided by 16" in desc["input"]["description"]
    assert desc["meta"]["test_accuracy"] == result.test_accuracy
    # the reloaded model gives the same test accuracy
    data = load_digits(images=name == "digits-cnn")
    ck.model.eval()
    with engine.no_grad():
        predicted = ck.model(engine.Tensor(data.x_test)).data.argmax(1)
    assert np.mean(predicted == data.y_test) == pytest.approx(result.test_accuracy)


def test_train_command_writes_checkpoint_and_log(tmp_path):
    from serve.cli import main

    out = tmp_path / "mlp"
    run = CliRunner().invoke(main, ["train", "digits-mlp", "--epochs", "2", "--out", str(out),
                                    "--seed", "3", "--no-progress"])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "digits-mlp: test accuracy 0." in run.output
    assert checkpoint.describe(out)["meta"]["seed"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    bad = CliRunner().invoke(main, ["train", "digits-rnn"])
    assert bad.exit_code == 2 and "digits-rnn" in bad.output
