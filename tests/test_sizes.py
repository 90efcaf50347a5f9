"""Every size the params allow trains; what can't train is refused up front, in one line.

Property-based (hypothesis) over the training-set size, data.val_size, train.batch_size,
train.epochs and train.nproc: the real split, build() (net, optimizer, one-cycle
schedule) and fit() step through every step of the schedule. A process group can't be
started per example, so nproc > 1 runs one rank of the launch (any rank) in a one-process
Gloo group: its shard, batches, DDP wrapper and collectives are the real ones.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from helpers import ROOT, make_repo, synthetic, write_raw
from fmnist.distributed import World, per_rank_batch, shard, steps_per_epoch
from fmnist.params import TRAIN_IMAGES, check_params, size_problems
from fmnist.splits import split_train_val
from fmnist.training import Settings, build, fit, lr_factor, train_epoch

CPU = torch.device("cpu")
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def train_params(**overrides) -> dict:
    return {**DEFAULTS["train"], "device": "cpu", "precision": "fp32", "lr": 0.05, **overrides}


def assert_one_line_each(problems: list[str]) -> None:
    assert problems
    for line in problems:
        assert "\n" not in line and line.split(":")[0] in (
            "data.val_size", "train.nproc", "train.batch_size"), line


@pytest.fixture(scope="module")
def group():
    """A one-process Gloo group: one rank of an N-process launch runs its real code in it."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@settings(deadline=None)  # a shared CI machine's timings vary
@given(total=st.integers(1, 3000))
def test_the_schedule_is_defined_at_every_step(total):
    factors = [lr_factor(step, total) for step in range(total + 1)]  # + the step() after the last one
    assert all(math.isfinite(f) and 0 < f <= 1 for f in factors)
    assert max(factors) == 1.0  # the peak learning rate is reached, even with one step


@settings(deadline=None)
@given(images=st.integers(1, TRAIN_IMAGES), val_size=st.integers(0, TRAIN_IMAGES),
       batch_size=st.integers(1, 4096), nproc=st.integers(1, 64))
def test_every_rank_takes_the_steps_the_schedule_counts(images, val_size, batch_size, nproc):
    """The arithmetic train_epoch runs on each rank, at full scale."""
    problems = size_problems(images, val_size, batch_size, nproc)
    if problems:
        assert_one_line_each(problems)
        return
    n_train = images - val_size
    steps = steps_per_epoch(n_train, batch_size, nproc)
    assert steps >= 1
    order = torch.randperm(n_train)
    shards = [shard(order, rank, nproc) for rank in range(nproc)]
    per_rank = per_rank_batch(batch_size, nproc)
    assert {len(s) for s in shards} == {n_train // nproc} and n_train // nproc >= 1
    assert all(-(-len(s) // per_rank) == steps for s in shards)  # every rank, the same steps
    seen = torch.cat(shards)
    assert len(seen.unique()) == len(seen) > n_train - nproc  # disjoint, fewer than nproc left out


def test_the_params_check_refuses_what_cannot_train():
    def check(**train):
        params = {**DEFAULTS, "train": {**DEFAULTS["train"], **train}}
        return check_params(params)

    assert check() == []
    assert check(nproc=4, batch_size=3) == [
        "train.batch_size: got 3, but each of the train.nproc 4 processes takes batch_size / nproc images "
        "a step: it must be at least 4"]
    params = {**DEFAULTS, "data": {**DEFAULTS["data"], "val_size": 59_998}, "train": {**DEFAULTS["train"], "nproc": 3}}
    assert check_params(params) == [
        "train.nproc: got 3, but Fashion-MNIST has 60000 training images and data.val_size holds out 59998, "
        "leaving 2: fewer than one per process; lower train.nproc or data.val_size"]
    params["data"]["val_size"] = 59_999
    params["train"]["nproc"] = 1
    assert check_params(params) == []  # one training image trains


@st.composite
def run_sizes(draw):
    """Sizes of a small run: mostly trainable, some not (what the checks must refuse)."""
    images = draw(st.integers(1, 32))
    return images, draw(st.integers(1, max(1, images - 1))), draw(st.integers(1, 150)), \
        draw(st.integers(1, 2)), draw(st.integers(1, 4))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=run_sizes(), rank=st.integers(0, 3),
       model=st.sampled_from(["lenet", "cnn", "cnn3v2", "cnn3_small"]), optimizer=st.sampled_from(["sgd", "adamw"]))
def test_every_size_the_params_allow_trains(group, sizes, rank, model, optimizer):
    images, val_size, batch_size, epochs, nproc = sizes
    problems = size_problems(images, val_size, batch_size, nproc)
    if problems:
        assert_one_line_each(problems)
        event("refused")
        return
    x, y = (torch.from_numpy(a) for a in synthetic(images, seed=images))
    y = y.long()
    train_idx, val_idx = split_train_val(images, val_size, seed=0)  # what the prepare stage does
    train, val = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
    p = train_params(epochs=epochs, batch_size=batch_size, nproc=nproc, model=model, optimizer=optimizer)
    world = World(rank % nproc, nproc)

    state = build(p, len(train[1]), CPU, world)
    optimizer_, scheduler = state.optimizer, state.scheduler
    steps = []
    optimizer_.register_step_post_hook(lambda *_: steps.append(scheduler.last_epoch))
    progress = fit(state, train, val, Settings.from_params(p, CPU, None, world, progress_bar=False))

    total = epochs * steps_per_epoch(len(train[1]), batch_size, nproc)
    assert len(steps) == total == scheduler.last_epoch  # every step of the schedule, no more
    assert steps == list(range(total))
    assert all(math.isfinite(g["lr"]) and g["lr"] > 0 for g in optimizer_.param_groups)
    assert progress.epoch == epochs
    if world.main:
        assert len(progress.history) == epochs and progress.best["state_dict"] is not None
    event(f"trained: {'one step' if total == 1 else 'several steps'}, {nproc} process(es)")


def test_a_single_step_and_a_last_batch_of_one_image_train():
    x, y = (torch.from_numpy(a) for a in synthetic(33, seed=0))
    y = y.long()
    for batch_size, expected in ((64, 1), (32, 2), (1, 33)):  # 33 = 32 + 1: a last batch of one image
        p = train_params(epochs=1, batch_size=batch_size)
        state = build(p, 33, CPU)
        loss, acc, _ = train_epoch(state, x, y, 1, Settings.from_params(p, CPU, None, progress_bar=False))
        assert state.scheduler.last_epoch == expected == steps_per_epoch(33, batch_size)
        assert math.isfinite(loss) and 0 <= acc <= 1


@pytest.mark.e2e
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
