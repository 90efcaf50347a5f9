"""Distributed data parallel on CPU: two Gloo processes under torchrun, on tiny data."""

from __future__ import annotations

import json
import sys

import torch

from conftest import make_repo, write_raw

DDP_PARAMS = {"data": {"val_size": 60}, "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu"}}


def test_two_processes_train_one_model_reproducibly(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=600)
    repo = make_repo(tmp_path / "repo", raw, params=DDP_PARAMS)
    repo.dvc("repro", "prepare")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "stages/train.py", "data/prepared"]
    weights = []
    for run in ("a", "b"):
        out = repo.run(*torchrun, f"models/{run}.pt", f"models/{run}-ckpt.pt", f"metrics/{run}",
                       f"metrics/{run}.json").stdout
        assert "2 processes" in out and out.count("saved epoch") == 1, out
        weights.append(torch.load(repo.path / f"models/{run}.pt", weights_only=True)["state_dict"])
        rows = (repo.path / f"metrics/{run}/plots/metrics/train/loss.tsv").read_text().splitlines()
        column = rows[0].split("\t").index("loss")
        losses = [float(row.split("\t")[column]) for row in rows[1:]]
        assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert sorted(p.name for p in (repo.path / "models").iterdir() if p.suffix == ".pt") == \
        ["a-ckpt.pt", "a.pt", "b-ckpt.pt", "b.pt"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_train_nproc_runs_the_stage_under_torchrun(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=600)
    repo = make_repo(tmp_path / "repo", raw, params={**DDP_PARAMS, "train": {**DDP_PARAMS["train"], "nproc": 2}})
    out = repo.dvc("repro").stdout
    assert "launching 2 processes" in out and "2 processes" in out
    metrics = json.loads((repo.path / "metrics/eval.json").read_text())
    assert metrics["test_acc"] > 0.3  # chance is 0.1
