"""fmnist/checkpoint.py: the training checkpoint, and resuming from it (train.resume)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from helpers import ROOT, tiny
from fmnist.checkpoint import checkpoint_state, restore
from fmnist.distributed import steps_per_epoch
from fmnist.training import Settings, build, fit

CPU = torch.device("cpu")
TRAIN = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_run_restored_from_its_checkpoint_ends_like_an_uninterrupted_one(ema):
    p = {**TRAIN, "epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu", "ema": ema, "shift": 1, "erase": 0.3}
    train, val = tiny(160), tiny(40, seed=3)
    saved = {}

    def run(checkpoint=None):
        state = build(p, len(train[1]), CPU)
        steps = steps_per_epoch(len(train[1]), p["batch_size"])
        progress = restore(checkpoint, "key", state, steps) if checkpoint else None

        def on_epoch(progress, seconds):  # what the train stage's checkpoint holds
            if progress.epoch == 2 and checkpoint is None:
                saved.update(copy.deepcopy(checkpoint_state(progress, "key", state)))

        return fit(state, train, val, Settings.from_params(p, CPU, None, progress_bar=False), progress, on_epoch)

    straight = run()
    resumed = run(checkpoint=saved)
    assert resumed.epoch == 3 and resumed.history == straight.history
    assert resumed.best["epoch"] == straight.best["epoch"]
    for key, value in straight.best["state_dict"].items():
        assert torch.equal(value, resumed.best["state_dict"][key]), key
