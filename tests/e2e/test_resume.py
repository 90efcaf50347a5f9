"""Resuming through the train stage (train.resume) and under torchrun: a run killed
mid-way and taken up again ends as the uninterrupted run.

The checkpoint's own checks are unit-tested in unit/test_checkpoint.py; a damaged
checkpoint given to the stage is in test_failures.py.
"""

from __future__ import annotations

import os
import signal

import torch

from helpers import SLOW, make_repo, set_params, start_repro, wait_for, write_raw


def test_resume_continues_and_ends_with_the_uninterrupted_weights(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=1600)
    straight = make_repo(tmp_path / "straight", raw, params={**SLOW, "data": {"val_size": 60}})
    straight.dvc("repro")
    expected = torch.load(straight.path / "models/model.pt", weights_only=True)

    resumed = make_repo(tmp_path / "resumed", raw, params={**SLOW, "data": {"val_size": 60}})
    set_params(resumed.path, {"train": {"resume": True}})
    proc = start_repro(resumed)
    wait_for(resumed.path / "models/checkpoint.pt", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (resumed.path / "models/model.pt").exists()
    out = resumed.dvc("repro").stdout
    assert "resuming after epoch" in out
    got = torch.load(resumed.path / "models/model.pt", weights_only=True)
    assert got["epoch"] == expected["epoch"]
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    for path in ("metrics/train.json", "metrics/train/metrics.json", "metrics/train/plots/metrics/val/acc.tsv"):
        assert (resumed.path / path).read_text() == (straight.path / path).read_text(), path
