"""params.yaml through the pipeline: what can't train stops with one line before any work.

A damaged params.yaml fed to a stage is in test_failures.py, with the other damaged files.
"""

from __future__ import annotations

import torch

from helpers import make_repo, write_raw


def test_a_run_of_a_single_optimizer_step_and_sizes_that_cannot_train(tmp_path):
    """The issue's case, smaller: one epoch of one step trains through the real pipeline;
    a combination that can't train stops with one line before any work."""
    repo = make_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=400))
    out = repo.dvc("exp", "run", "-S", "train.epochs=1", "-S", "train.batch_size=1024").stdout
    assert "epoch 1/1" in out and "saved epoch 1" in out, out
    ckpt = torch.load(repo.path / "models/checkpoint.pt", weights_only=True)
    assert ckpt["scheduler"]["last_epoch"] == 1  # 340 images, batch 1024: one step
    assert (repo.path / "metrics/eval.json").is_file()

    proc = repo.dvc("exp", "run", "-S", "train.nproc=4", "-S", "train.batch_size=2", check=False)
    assert proc.returncode != 0
    assert "train.batch_size: got 2, but each of the train.nproc 4 processes" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    repo.run("git", "checkout", "params.yaml")  # a failed `dvc exp run` leaves its -S values in the file

    proc = repo.dvc("exp", "run", "-S", "data.val_size=400", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "error: data.val_size: got 400, but data/raw/train-images-idx3-ubyte has 400 training images; " \
           "at most 399 can be held out for validation" in proc.stderr, proc.stderr
