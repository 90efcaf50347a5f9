"""params.yaml through the pipeline: bad values, unknown keys, a device the machine lacks
and sizes that can't train stop with one line before any work, losing nothing.

A damaged params.yaml fed to a stage is in test_failures.py, with the other damaged files.
"""

from __future__ import annotations

import pytest
import torch

from helpers.data import write_raw
from helpers.processes import assert_clean_failure
from helpers.repos import file_md5, make_repo, set_params


def test_bad_params_stop_before_work_and_lose_nothing(repo):
    repo.dvc("repro")
    repo.commit("good run")
    lock_before = (repo.path / "dvc.lock").read_bytes()
    model_before = file_md5(repo.path / "models/model.pt")

    set_params(repo.path, {"train": {"lr": -0.1, "epoch": 3}})
    proc = repo.dvc("repro", check=False)
    assert_clean_failure(proc, "train.lr: got -0.1, expected a finite number > 0",
                         "train.epoch: unknown key (did you mean 'epochs'?)")
    assert (repo.path / "dvc.lock").read_bytes() == lock_before

    repo.run("git", "checkout", "params.yaml")
    repo.dvc("checkout")
    assert file_md5(repo.path / "models/model.pt") == model_before
    assert repo.dvc("status", "--json").stdout.strip() == "{}"


def test_an_override_of_an_unknown_key_is_refused(repo):
    """DVC refuses `-S` of a key params.yaml lacks before any stage runs; `-S +key=...` adds
    it, and then the first stage that reads params refuses it, by name (not `train.epochs`,
    which any message about the epochs would name)."""
    proc = repo.dvc("exp", "run", "-S", "train.epoch=3", check=False)
    assert proc.returncode != 0 and "Running stage" not in proc.stdout, proc.stdout
    assert "Could not override 'train.epoch'." in proc.stderr, proc.stderr
    assert not (repo.path / "data").exists()

    proc = repo.dvc("exp", "run", "-S", "+train.epoch=3", check=False)
    assert_clean_failure(proc, "error: params.yaml: train.epoch: unknown key (did you mean 'epochs'?); known keys: ")
    assert "Running stage 'train'" not in proc.stdout and not (repo.path / "models/model.pt").exists()


def test_an_unregistered_net_is_refused_by_name_before_the_train_stage_does_anything(repo):
    """train.model is checked where the nets are registered (fmnist/model/nets.py), and the
    train stage asks that before it picks a device or reads the data."""
    proc = repo.dvc("exp", "run", "-S", "train.model=cnn7", check=False)
    assert_clean_failure(proc, "error: params.yaml: train.model: got 'cnn7' (did you mean 'cnn")
    assert "Running stage 'train'" in proc.stdout and "training on" not in proc.stdout, proc.stdout
    assert not (repo.path / "models/model.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_device_is_a_clear_error(repo):
    set_params(repo.path, {"train": {"device": "cuda"}})
    proc = repo.dvc("repro", check=False)
    assert_clean_failure(proc, "train.device: cuda was asked for but this machine has no cuda device")
    assert not (repo.path / "models/model.pt").exists()


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
