"""fmnist/training/checkpoint.py: the training checkpoint and resuming from it (train.resume).

A genuine checkpoint resumes to the weights, history and best epoch of the uninterrupted
run; a damaged one is refused by restore() in one line saying why (fuzzed with
hypothesis: any value anywhere is refused, or the run trains to its end). Through the
train stage and under torchrun: e2e/test_resume.py; a damaged checkpoint given to the
stage: e2e/test_failures.py.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmnist.core.io import torch_bytes
from fmnist.params import Train
from fmnist.training.checkpoint import ResumeError, checkpoint_state, restore
from fmnist.training.distributed import steps_per_epoch
from fmnist.training.loop import build, fit
from helpers import ROOT
from helpers.damage import one_line, put_junk
from helpers.data import synthetic, tiny

CPU = torch.device("cpu")
TRAIN = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
P = Train.model_validate({**TRAIN, "model": "lenet", "epochs": 2, "batch_size": 16, "lr": 0.05, "device": "cpu",
                          "precision": "fp32"})
KEY = {"params": "the train params", "world": 1, "data_sha256": "abc"}


def tiny_data():
    x, y = (torch.from_numpy(a) for a in synthetic(60, seed=3))
    return (x[:40], y[:40].long()), (x[40:], y[40:].long())


ADAMW = P.model_copy(update={"optimizer": "adamw", "lr": 0.01})


def fresh(p: dict = P):
    train, _ = tiny_data()
    return build(p, train[0], CPU)


def steps(p: dict = P) -> int:
    return steps_per_epoch(40, p.batch_size)




def _genuine(p: dict):
    train, val = tiny_data()
    state = fresh(p)
    progress = fit(state, train, val, p.model_copy(update={"epochs": 1}))
    saved = torch.load(io.BytesIO(torch_bytes(checkpoint_state(progress, KEY, state))), weights_only=True)
    state = fresh(p)
    straight = fit(state, train, val, p)
    return saved, state.net.state_dict(), straight


@pytest.fixture(scope="module")
def genuine():
    """A checkpoint after epoch 1 of 2 (SGD), round-tripped through bytes like the one on
    disk, and the weights of the uninterrupted run."""
    return _genuine(P)


@pytest.fixture(scope="module")
def genuine_adamw():
    return _genuine(ADAMW)


def resume_and_finish(checkpoint, p: dict = P):
    """restore() into a fresh run, then train it to the end, as the train stage does."""
    train, val = tiny_data()
    state = fresh(p)
    progress = restore(checkpoint, KEY, state, steps(p), p.epochs)
    progress = fit(state, train, val, p, progress)
    return state.net, progress


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_genuine_checkpoint_resumes_to_the_uninterrupted_weights(request, optimizer):
    saved, weights, straight = request.getfixturevalue("genuine" if optimizer == "sgd" else "genuine_adamw")
    net, progress = resume_and_finish(copy.deepcopy(saved), P if optimizer == "sgd" else ADAMW)
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert progress.history == straight.history and progress.best["epoch"] == straight.best["epoch"]


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_run_restored_from_its_checkpoint_ends_like_an_uninterrupted_one(ema):
    """With flips, shifts and erasing, with and without the moving average: the checkpoint
    fit() hands the train stage after epoch 2 of 3 ends with the same best weights."""
    p = Train.model_validate({**TRAIN, "epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu", "ema": ema,
                              "augment": {"flip": True, "shift": 1, "erase": 0.3}})
    train, val = tiny(160), tiny(40, seed=3)
    saved = {}

    def run(checkpoint=None):
        state = build(p, train[0], CPU)
        steps = steps_per_epoch(len(train[1]), p.batch_size)
        progress = restore(checkpoint, "key", state, steps, p.epochs) if checkpoint else None

        def on_epoch(progress, seconds):  # what the train stage's checkpoint holds
            if progress.epoch == 2 and checkpoint is None:
                saved.update(copy.deepcopy(checkpoint_state(progress, "key", state)))

        return fit(state, train, val, p, progress, on_epoch)

    straight = run()
    resumed = run(checkpoint=saved)
    assert resumed.epoch == 3 and resumed.history == straight.history
    assert resumed.best["epoch"] == straight.best["epoch"]
    for key, value in straight.best["state_dict"].items():
        assert torch.equal(value, resumed.best["state_dict"][key]), key


def _set(*where):
    """A damage that puts where[-1] at the path where[:-1] of the checkpoint."""
    *path, value = where

    def damage(checkpoint):
        node = checkpoint
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value(checkpoint) if callable(value) else value
        return checkpoint
    return damage


DAMAGED_CHECKPOINTS = {
    "a list": (lambda c: [1, 2], "is not a training checkpoint"),
    "other params": (_set("key", "world", 2), "was made with other train params, process count or data"),
    "a tensor for a key": (_set("key", torch.zeros(3)), "was made with other train params"),
    "epoch a float": (_set("epoch", 1.5), "epoch 1.5, expected a whole number >= 1"),
    "epoch beyond the run": (_set("epoch", 3), "epoch 3, more than train.epochs: 2"),
    "history a string": (_set("history", "x"), "1 epochs done but the history is 'x'"),
    "a row of history a string": (_set("history", 0, "x"), "a row of history is 'x'"),
    "a loss that is a string": (_set("history", 0, "val/loss", "low"), "a row of history is"),
    "best is None": (_set("best", None), "'best' is None"),
    "best epoch beyond the run": (_set("best", "epoch", 5), "the best epoch 5 doesn't match the history"),
    "best accuracy changed": (_set("best", "val_acc", 2.0), "doesn't match the history"),
    "best weights an extra key": (_set("best", "state_dict", "extra", torch.zeros(1)),
                                  "best weights: 1 unexpected weights (extra)"),
    # Found by fuzzing (fuzz/corpus/model/crash-unprintable-weight-name.pkl): a weight's name is quoted printable.
    "a weight named with an escape": (_set("best", "state_dict", "\x1b[2J", torch.zeros(1)),
                                      "best weights: 1 unexpected weights (\\x1b[2J)"),
    "weights of the wrong shape": (_set("state_dict", "0.weight", torch.zeros(2, 2)), "weights: weight 0.weight is"),
    "NaN weights": (_set("state_dict", "0.weight",
                         lambda c: torch.full_like(c["state_dict"]["0.weight"], float("nan"))),
                    "holds NaN or infinite values"),
    "momentum of the wrong shape": (_set("optimizer", "state", 0, "momentum_buffer", torch.zeros(2)),
                                    "optimizer state 'momentum_buffer' doesn't fit its weight"),
    "momentum missing": (_set("optimizer", "state", 0, {}), "the optimizer's state doesn't cover every weight"),
    "optimizer groups missing": (_set("optimizer", "param_groups", []), "the optimizer's settings or learning rate"),
    "optimizer settings changed": (_set("optimizer", "param_groups", 0, "momentum", 0.5),
                                   "the optimizer's settings or learning rate differ from this run's"),
    "learning rate changed": (_set("optimizer", "param_groups", 0, "lr", 1e6), "learning rate differ"),
    "schedule garbage": (_set("scheduler", "base_lrs", "x"),
                         "the schedule isn't where 1 epoch(s) of this run leave it"),
    "schedule at another step": (_set("scheduler", "last_epoch", 7), "the schedule isn't where"),
    "schedule counter a string": (_set("scheduler", "_step_count", "x"), "the schedule isn't where"),
    "schedule a list": (_set("scheduler", [1]), "the schedule isn't where"),
    "moving average missing": (_set("ema", None), "the moving average of the weights is None"),
    "moving average at another step": (_set("ema", "updates", 1), "the moving average of the weights is"),
    "averaged weights of the wrong shape": (_set("ema", "state_dict", "0.weight", torch.zeros(2)),
                                            "averaged weights: weight 0.weight is"),
}


@pytest.mark.parametrize("damage", DAMAGED_CHECKPOINTS)
def test_a_damaged_checkpoint_is_refused_saying_why(genuine, damage):
    mutate, expected = DAMAGED_CHECKPOINTS[damage]
    checkpoint = mutate(copy.deepcopy(genuine[0]))
    with pytest.raises(ResumeError) as err:
        resume_and_finish(checkpoint)
    one_line(str(err.value), expected)


def test_a_checkpoint_claiming_a_billion_epochs_is_refused_before_anything_is_replayed(genuine):
    checkpoint = copy.deepcopy(genuine[0])
    checkpoint["epoch"] = 10**9
    with pytest.raises(ResumeError) as err:
        restore(checkpoint, KEY, fresh(), steps(), P.epochs)
    assert str(err.value) == "is damaged (epoch 1000000000, more than train.epochs: 2)"


def test_a_long_consistent_claim_is_refused_without_replaying_its_schedule(genuine):
    """A history of memo references is a few bytes a row: a checkpoint within the size limit
    can claim many epochs, each row, the moving average's count and the best epoch agreeing.
    The schedule's replay (epoch x steps steps) must not start."""
    checkpoint = copy.deepcopy(genuine[0])
    epoch = 10**5
    checkpoint["epoch"], checkpoint["history"] = epoch, checkpoint["history"] * epoch
    if checkpoint["ema"] is not None:
        checkpoint["ema"]["updates"] = epoch * steps()
    state = fresh()
    replayed = []
    state.scheduler.step = lambda: replayed.append(1)
    with pytest.raises(ResumeError) as err:
        restore(checkpoint, KEY, state, steps(), P.epochs)
    one_line(str(err.value), f"epoch {epoch}, more than train.epochs: 2")
    assert replayed == []


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_anywhere_in_a_checkpoint_is_refused_or_trains_on(request, optimizer, data):
    """No damage makes the stage fail later: restore() refuses it or the run trains to its end."""
    saved = request.getfixturevalue("genuine" if optimizer == "sgd" else "genuine_adamw")[0]
    checkpoint = copy.deepcopy(saved)
    put_junk(data, checkpoint)
    try:
        _net, progress = resume_and_finish(checkpoint, P if optimizer == "sgd" else ADAMW)
    except ResumeError as exc:
        one_line(str(exc))
    else:
        assert progress.epoch == P.epochs and progress.best["state_dict"] is not None
