"""Resuming through the train stage (train.resume) and under torchrun: a run killed
mid-way and taken up again ends as the uninterrupted run.

- `dvc repro` killed with SIGKILL, then `dvc repro` again with train.resume.
- One node, a worker killed with SIGKILL mid-run: restarted by torchrun --max-restarts
  (three processes), or (no restarts) resumed by train.resume; either ends as the
  uninterrupted run: the model file byte for byte, the checkpoint, the logged figures.

The checkpoint's own checks are unit-tested in unit/test_checkpoint.py; a damaged
checkpoint given to the stage is in test_failures.py.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from helpers.data import write_raw
from helpers.processes import (
    KILL_PARAMS,
    RUNTIME_LOCK,
    SLOW,
    assert_same_run,
    final_state,
    launch,
    needs_proc,
    start_repro,
    torchrun,
    wait_for,
)
from helpers.repos import make_repo, set_params

# Where the uninterrupted reference run writes, beside the interrupted run's own outputs.
REF_OUTPUTS = ("models/ref.pt", "models/ref-checkpoint.pt", "metrics/ref", "metrics/ref.json")


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


@needs_proc
def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_interrupted(tmp_path):
    # Three processes: with two, the sum of the ranks' gradients can't depend on the order.
    raw = write_raw(tmp_path / "raw", n_train=1000)
    repo = make_repo(tmp_path / "repo", raw, params={
        **KILL_PARAMS, "train": {**KILL_PARAMS["train"], "nproc": 3, "max_restarts": 1}})
    repo.dvc("repro", "prepare")
    # Uninterrupted, through train.nproc: the stage relaunches itself with --max-restarts.
    out = repo.run(sys.executable, "stages/train.py", "data/prepared", *REF_OUTPUTS, RUNTIME_LOCK).stdout
    assert "--max-restarts=1" in out and "3 processes" in out
    # As a user would launch it; rank 2 dies after the first epoch and torchrun starts
    # all three again, which resume from the checkpoint rank 0 wrote.
    out, = launch([repo], torchrun("--standalone", "--nproc_per_node=3", "--max-restarts=1"), tmp_path, kill_rank=2)
    assert out.startswith("exit 0\n"), out
    assert "torchrun restarted the workers (restart 1)" in out and out.count("saved epoch") == 1, out
    assert_same_run(final_state(repo), final_state(repo, REF_OUTPUTS), out)



@needs_proc
def test_resume_under_ddp_after_rank_0_was_killed(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=1000)
    repo = make_repo(tmp_path / "repo", raw, params={**KILL_PARAMS, "train": {**KILL_PARAMS["train"], "resume": True}})
    repo.dvc("repro", "prepare")
    cmd = torchrun("--standalone", "--nproc_per_node=2")
    out = repo.run(*torchrun("--standalone", "--nproc_per_node=2", outputs=REF_OUTPUTS)).stdout
    assert "starting afresh" in out
    # No restarts: killing rank 0 (the one that writes the checkpoint) ends the run...
    out, = launch([repo], cmd, tmp_path, kill_rank=0)
    assert not out.startswith("exit 0\n") and not (repo.path / "models/model.pt").exists(), out
    assert "this is a bug" not in out, out  # rank 1 says it lost rank 0 (unless SIGTERM came first)
    # ...and train.resume takes it up again.
    out = repo.run(*cmd).stdout
    assert "train.resume: resuming after epoch" in out, out
    assert_same_run(final_state(repo), final_state(repo, REF_OUTPUTS), out)
