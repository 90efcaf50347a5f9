"""Stage `train`: train the classifier with the params' `train` section; keep the best epoch.

    python stages/train.py data/prepared models/model.pt models/checkpoint.pt metrics/train metrics/train.json \\
        requirements/runtime-versions.txt

Logs train and validation loss and accuracy each epoch with DVCLive into LIVE_DIR, as
it goes (DVCLive's step is the epoch, 1 to train.epochs; both losses are plain
cross-entropy, and train/loss_smoothed is the label-smoothed loss the optimiser
minimises), and the run's headline figures (epochs done, best epoch, its validation
accuracy) into SUMMARY, so `dvc exp show`, `dvc plots` and the VS Code extension show a
run while it trains. After every epoch the full training state goes to CHECKPOINT, from
which `train.resume: true` continues an interrupted run. At the end the weights of the
epoch with the best validation accuracy go to MODEL, with the params, class names and
data hash they were trained with, and the environment that trained them: Python, torch,
platform and the sha256 of LOCK, the runtime lock's versions (fmnist/model/model_file.py).

When the file named by FMNIST_STOP_FILE appears (a sweep pruning this trial), a
one-process run ends with the epochs it finished (fmnist/training/stop.py).

With `train.nproc: N` (N > 1) the script relaunches itself under torchrun as N
processes with DistributedDataParallel; it can also be launched so directly:

    torchrun --standalone --nproc_per_node=2 stages/train.py data/prepared models/model.pt \\
        models/checkpoint.pt metrics/train metrics/train.json requirements/runtime-versions.txt
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch.distributed as dist

from fmnist.core.errors import run
from fmnist.model.device import pick_device, pick_dtype, placement, to_device
from fmnist.model.nets import name_problem
from fmnist.params import check_sizes, load_params
from fmnist.splits import load_nonempty_split, load_split
from fmnist.training.checkpoint import run_key, start
from fmnist.training.distributed import check_nproc, init_distributed, peers_lost, relaunch_under_torchrun
from fmnist.training.environment import describe
from fmnist.training.loop import fit
from fmnist.training.record import Record
from fmnist.training.stop import stop_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("prepared", "model", "checkpoint", "live_dir", "summary", "lock"):
        parser.add_argument(name, type=Path)
    args = parser.parse_args()
    # Every problem of params.yaml in one message, an unregistered net included, before any work.
    p = load_params(model_problem=name_problem).train
    device = pick_device(p.device)
    if "WORLD_SIZE" not in os.environ:  # not a worker: what this machine can't do is one line, before any work
        check_nproc(p.nproc, device)
        pick_dtype(p.precision, device)
    environment = describe(args.lock)  # read before training: a missing lock costs seconds, not a run
    train = load_split(args.prepared / "train.pt")
    val = load_nonempty_split(args.prepared / "val.pt", "validation")
    world_size = int(os.environ.get("WORLD_SIZE", p.nproc))
    # params.yaml's check assumed the official 60,000 training images: the data may hold fewer.
    check_sizes(len(train[1]) + len(val[1]), len(val[1]), p.batch_size, world_size, source=str(args.prepared))
    if p.nproc > 1 and "WORLD_SIZE" not in os.environ:  # run again as nproc processes, under torchrun
        return relaunch_under_torchrun(p.nproc, p.max_restarts)
    world, device = init_distributed(device)
    dtype = pick_dtype(p.precision, device)
    if world.main:
        print(f"training on {placement(device, dtype, p.device)}"
              + (f", {world.size} processes" if world.size > 1 else ""))
    key = run_key(p, *train, world.size)
    state, progress = start(p, args.checkpoint, key, train[0], device, dtype, world)
    record = Record(args.checkpoint, args.summary, args.live_dir, key, state, p, progress) if world.main else None
    train, val = [tuple(to_device(t, device) for t in split) for split in (train, val)]  # moved once, for the run
    try:
        progress = fit(state, train, val, p, progress, record.epoch if record else None, stop_request(world))
    except RuntimeError as exc:  # a peer that died shows as a Gloo or NCCL transport error, not as a bug
        lost = peers_lost(exc, world)
        if lost is None:
            raise
        raise lost from None
    if world.main:
        record.finish(progress, args.model, environment)
    if world.size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
