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
one-process run stops at its next check, drops the epoch under way and ends as if that
were the last: the model, summary (with "stopped_early": true) and curves of the epochs
it did.

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

from fmnist.training.checkpoint import checkpoint_state, resume, run_key, share_restored
from fmnist.model.device import pick_device, pick_dtype, to_device
from fmnist.training.distributed import init_distributed, peers_lost, relaunch_under_torchrun, steps_per_epoch
from fmnist.core.errors import ParamError, run
from fmnist.core.io import save_torch, write_json, writing
from fmnist.training.environment import describe
from fmnist.model.model_file import save_model
from fmnist.params import load_params, size_problems
from fmnist.splits import load_nonempty_split, load_split
from fmnist.training.loop import Progress, Settings, build, fit


def summary(progress: Progress) -> dict:
    """The headline figures of metrics/train.json, as `dvc metrics show` and `dvc exp show` list them."""
    return {"epoch": progress.epoch, "best_epoch": progress.best["epoch"], "best_val_acc": progress.best["val_acc"]}


def log_row(live, epoch: int, row: dict) -> None:
    live.step = epoch  # the curves' x axis counts epochs from 1, as the console does
    for name, value in row.items():
        live.log_metric(name, value)
    live.next_step()


class StopRequested(Exception):
    """FMNIST_STOP_FILE exists: a sweep asks this run to end with the epochs it has done."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("prepared", "model", "checkpoint", "live_dir", "summary", "lock"):
        parser.add_argument(name, type=Path)
    args = parser.parse_args()
    p = load_params()["train"]
    environment = describe(args.lock)  # read before training: a missing lock costs seconds, not a run
    # Checked here, once, rather than in N processes after a relaunch.
    train_x, train_y = load_split(args.prepared / "train.pt")
    val_x, val_y = load_nonempty_split(args.prepared / "val.pt", "validation")
    world_size = int(os.environ.get("WORLD_SIZE", p["nproc"]))
    # params.yaml's check assumed the official 60,000 training images: the data may hold fewer.
    problems = size_problems(len(train_y) + len(val_y), len(val_y), p["batch_size"], world_size,
                             source=str(args.prepared))
    if problems:
        raise ParamError(problems[0])
    if p["nproc"] > 1 and "WORLD_SIZE" not in os.environ:
        pick_device(p["device"])  # a missing device is reported once, not by N processes
        return relaunch_under_torchrun(p["nproc"], p["max_restarts"])

    world, device = init_distributed(pick_device(p["device"]))
    dtype = pick_dtype(p["precision"], device)
    if world.main:
        print(f"training on {device.type}" + (" (picked by train.device: auto)" if p["device"] == "auto" else "")
              + (" with bf16 autocast" if dtype else " in fp32")
              + (f", {world.size} processes" if world.size > 1 else ""))
    key = run_key(p, train_x, train_y, world.size)
    train = to_device(train_x, device), to_device(train_y, device)  # moved once, for the whole run
    val = to_device(val_x, device), to_device(val_y, device)

    state = build(p, len(train_y), device, world)
    progress = None
    if p["resume"] or world.restart:  # torchrun restarted the workers after one failed
        if world.main:
            if world.restart:
                print(f"torchrun restarted the workers (restart {world.restart}); resuming from the last checkpoint")
            progress = resume(args.checkpoint, key, state, steps_per_epoch(len(train_y), p["batch_size"], world.size))
        progress = share_restored(progress, state, world)
        if progress is None:  # a failed restore may have loaded part of the state
            state = build(p, len(train_y), device, world)

    live = None
    if world.main:
        from dvclive import Live  # rank 0 only: the other ranks never log

        # Logged into place as training goes, so a run shows while it trains; a killed
        # run leaves the epochs it did, and the next run starts the folder afresh.
        with writing(args.live_dir):  # DVCLive's own writes name no file when the disk is full
            live = Live(dir=str(args.live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
            for epoch, row in enumerate(progress.history if progress else [], 1):  # what a resumed run did before
                log_row(live, epoch, row)
        smoothing = p["label_smoothing"]
        print("loss: plain cross-entropy, train's on its augmented batches"
              + (f"; smoothed: the label-smoothed loss minimised (train.label_smoothing {smoothing:g})"
                 if smoothing else ""))

    done: list[Progress] = []  # the progress of the last whole epoch, for a run stopped on request

    def on_epoch(progress: Progress, seconds: float) -> None:
        done[:] = [progress]
        row = progress.history[-1]
        # The checkpoint first: when it can't be written, the summary still tells the truth.
        save_torch(args.checkpoint, checkpoint_state(progress, key, state))
        write_json(args.summary, summary(progress))
        with writing(args.live_dir):
            log_row(live, progress.epoch, row)
        smoothed = f" (smoothed {row['train/loss_smoothed']:.4f})" if p["label_smoothing"] else ""
        print(f"epoch {progress.epoch}/{p['epochs']}: train loss {row['train/loss']:.4f}{smoothed} "
              f"acc {row['train/acc']:.4f} | val loss {row['val/loss']:.4f} acc {row['val/acc']:.4f} "
              f"| {seconds:.1f} s", flush=True)

    stop_file = os.environ.get("FMNIST_STOP_FILE")

    def on_step(epoch: int, batches: int) -> None:
        if done and os.path.exists(stop_file):
            raise StopRequested()

    stopped = False
    try:
        progress = fit(state, train, val, Settings.from_params(p, device, dtype, world), progress, on_epoch,
                       on_step if stop_file and world.size == 1 else None)  # several ranks would have to agree
    except StopRequested:
        progress, stopped = done[0], True
        print(f"stopped after epoch {progress.epoch} of {p['epochs']}: {stop_file} asks for it", flush=True)
    except RuntimeError as exc:  # a peer that died shows as a Gloo or NCCL transport error, not as a bug
        lost = peers_lost(exc, world)
        if lost is None:
            raise
        raise lost from None

    if world.main:
        with writing(args.live_dir):
            live.end()
        best = progress.best
        save_model(args.model, best["state_dict"], params=p, epoch=best["epoch"], val_acc=best["val_acc"],
                   data_sha256=key["data_sha256"], environment=environment)
        write_json(args.summary, {**summary(progress), "stopped_early": True} if stopped else summary(progress))
        print(f"saved epoch {best['epoch']} (val acc {best['val_acc']:.4f}) to {args.model}")
    if world.size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
