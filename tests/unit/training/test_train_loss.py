"""The training loss that is logged is plain cross-entropy, as the validation loss is; the
label-smoothed loss that is optimised is logged beside it under its own name."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from fmnist.model.classifier import normalize
from fmnist.params import Train
from fmnist.training.checkpoint import ResumeError, checkpoint_state, restore
from fmnist.training.distributed import steps_per_epoch
from fmnist.training.loop import HISTORY_KEYS, build, fit, train_epoch
from helpers import ROOT
from helpers.data import synthetic

CPU = torch.device("cpu")
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]


def params(**overrides) -> Train:
    # LeNet has neither dropout nor batch norm: in training mode it computes what it does in eval mode.
    p = Train.model_validate({**DEFAULTS, "model": "lenet", "device": "cpu", "precision": "fp32", "epochs": 1,
                              "batch_size": 32, "augment": {"flip": False, "shift": 0, "erase": 0.0}, "ema": 0.0})
    return p.model_copy(update=overrides)  # unchecked: lr 0 (no step moves the weights) is a test's own value


def data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = synthetic(n, seed=3)
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def test_the_train_loss_is_plain_cross_entropy_of_the_batches_and_the_smoothed_one_is_what_is_minimised():
    p = params(lr=0.0, label_smoothing=0.1)  # no step changes the weights: the epoch's losses are the net's
    x, y = data()
    state = build(p, x, CPU)
    with torch.no_grad():
        logits = state.net(normalize(x.unsqueeze(1)))
    figures = train_epoch(state, x, y, 1, p)
    assert figures.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert figures.loss_smoothed == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-5)
    # Smoothing 0.1 over 10 classes: the optimised loss is at least 0.9 CE + 0.1 ln 10 (Jensen).
    assert figures.loss_smoothed >= 0.9 * figures.loss + 0.1 * math.log(10) - 1e-6


def test_without_smoothing_the_two_losses_are_one():
    p = params(lr=0.05, label_smoothing=0.0)
    x, y = data()
    figures = train_epoch(build(p, x, CPU), x, y, 1, p)
    assert figures.loss == figures.loss_smoothed and math.isfinite(figures.loss)


def test_a_learning_run_logs_a_train_loss_near_its_validation_loss():
    """The issue's symptom: with smoothing, the old train loss stayed about twice the validation loss."""
    p = params(model="cnn", lr=0.05, epochs=3, label_smoothing=0.1)
    train, val = data(192), data(96)
    progress = fit(build(p, train[0], CPU), train, val, p)
    last = progress.history[-1]
    assert set(last) == set(HISTORY_KEYS)
    assert last["val/acc"] > 0.9, last  # learnt: the losses are small
    assert last["train/loss_smoothed"] > 0.5 > last["train/loss"], last  # 0.5: smoothing 0.1's floor
    assert last["train/loss"] < 2 * last["val/loss"] + 0.05, last


def test_a_checkpoint_whose_history_rows_lack_the_smoothed_loss_is_refused_by_name():
    p = params(lr=0.05, epochs=2)
    train, val = data(), data(64)
    state = build(p, train[0], CPU)
    progress = fit(state, train, val, p)
    checkpoint = checkpoint_state(progress, "key", state)
    for row in checkpoint["history"]:
        del row["train/loss_smoothed"]  # what the code before this change logged
    with pytest.raises(ResumeError, match="a row of history holds train/acc, train/loss, val/acc, val/loss; "
                                          "this code's rows hold"):
        restore(checkpoint, "key", build(p, train[0], CPU), steps_per_epoch(len(train[1]), p.batch_size),
                p.epochs)
