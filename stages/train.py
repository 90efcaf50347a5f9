"""Stage `train`: train the classifier with the params' `train` section; keep the best epoch.

    python stages/train.py data/prepared models/model.pt models/checkpoint.pt metrics/train metrics/train.json

Logs train and validation loss and accuracy each epoch with DVCLive into LIVE_DIR, as
it goes, and the run's headline figures (epochs done, best epoch, its validation
accuracy) into SUMMARY, so `dvc exp show`, `dvc plots` and the VS Code extension show a
run while it trains. After every epoch the full training state goes to CHECKPOINT, from
which `train.resume: true` continues an interrupted run. At the end the weights of the
epoch with the best validation accuracy go to MODEL, with the params, class names and
data hash they were trained with.

When the file named by FMNIST_STOP_FILE appears (a sweep pruning this trial), a
one-process run stops at its next check, drops the epoch under way and ends as if that
were the last: the model, summary (with "stopped_early": true) and curves of the epochs
it did.

With `train.nproc: N` (N > 1) the script relaunches itself under torchrun as N
processes with DistributedDataParallel; it can also be launched so directly:

    torchrun --standalone --nproc_per_node=2 stages/train.py data/prepared models/model.pt \\
        models/checkpoint.pt metrics/train metrics/train.json
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fmnist.data import CLASSES
from fmnist.errors import DataError, ParamError, PeersLost, PipelineError, Terminated, run
from fmnist.files import load_params, load_split, load_torch, save_torch, write_json, writing
from fmnist.params import size_problems
from fmnist.training import (
    Progress, ResumeError, build, checkpoint_state, fit, init_distributed, pick_device, pick_dtype, restore,
    share_restored, steps_per_epoch, to_device,
)

# Params that don't change the numbers a run produces: a checkpoint made under other
# values of these can still be resumed.
NOT_RESULT_PARAMS = ("resume", "device", "compile", "max_restarts")


def run_key(p: dict, images: torch.Tensor, labels: torch.Tensor, world: int) -> dict:
    """What a checkpoint must match to be resumed: the params that shape results, the
    number of processes (it decides each one's shard) and the data."""
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    return {"params": {k: v for k, v in p.items() if k not in NOT_RESULT_PARAMS}, "world": world,
            "data_sha256": digest}


def resume(path: Path, key: dict, net, optimizer, scheduler, steps: int, ema) -> Progress | None:
    """The Progress of a checkpoint that matches this run, loaded into it; None (say why) otherwise."""
    if not path.exists():
        print(f"train.resume: no checkpoint at {path}; starting afresh")
        return None
    try:
        progress = restore(load_torch(path, "starting afresh"), key, net, optimizer, scheduler, steps, ema)
    except DataError as exc:
        print(f"train.resume: {exc}")
        return None
    except ResumeError as exc:
        print(f"train.resume: {path} {exc}; starting afresh")
        return None
    print(f"train.resume: resuming after epoch {progress.epoch} from {path}")
    return progress


def relaunch_under_torchrun(nproc: int, max_restarts: int) -> None:
    """Run this script as `nproc` processes under torchrun's agent, restarting them all up
    to `max_restarts` times when one fails.

    The agent runs in this process (not a `torchrun` child), so Ctrl-C, SIGTERM and a
    worker's failure end in this stage's one line rather than in torchrun's traceback.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    argv = ["--standalone", f"--nproc_per_node={nproc}", f"--max-restarts={max_restarts}", __file__, *sys.argv[1:]]
    print(f"launching {nproc} processes: torchrun {' '.join(argv)}", flush=True)
    try:
        torchrun(get_args_parser().parse_args(argv))
    except SignalException as exc:  # the agent has stopped the workers by now
        raise (KeyboardInterrupt() if exc.sigval == signal.SIGINT else Terminated()) from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise PipelineError(f"training process {rank} failed (exit code {failure.exitcode}) after "
                            f"train.max_restarts = {max_restarts} restart(s); the first error above says why") from None


def summary(progress: Progress) -> dict:
    """The headline figures of metrics/train.json, as `dvc metrics show` and `dvc exp show` list them."""
    return {"epoch": progress.epoch, "best_epoch": progress.best["epoch"], "best_val_acc": progress.best["val_acc"]}


class StopRequested(Exception):
    """FMNIST_STOP_FILE exists: a sweep asks this run to end with the epochs it has done."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("live_dir", type=Path)
    parser.add_argument("summary", type=Path)
    args = parser.parse_args()
    p = load_params()["train"]
    # Checked here, once, rather than in N processes after a relaunch.
    train_x, train_y = load_split(args.prepared / "train.pt")
    val_x, val_y = load_split(args.prepared / "val.pt")
    world_size = int(os.environ.get("WORLD_SIZE", p["nproc"]))
    if len(val_y) == 0:
        raise DataError(f"{args.prepared / 'val.pt'}: no validation images; re-create it with "
                        f"`dvc repro --force prepare`")
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
              + (f", {world.world} processes" if world.world > 1 else ""))
    key = run_key(p, train_x, train_y, world.world)
    train = to_device(train_x, device), to_device(train_y, device)  # moved once, for the whole run
    val = to_device(val_x, device), to_device(val_y, device)

    net, model, optimizer, scheduler, ema = build(p, len(train_y), device, world)
    progress = None
    if p["resume"] or world.restart:  # torchrun restarted the workers after one failed
        if world.main:
            if world.restart:
                print(f"torchrun restarted the workers (restart {world.restart}); resuming from the last checkpoint")
            progress = resume(args.checkpoint, key, net, optimizer, scheduler,
                              steps_per_epoch(len(train_y), p["batch_size"], world.world), ema)
        progress = share_restored(progress, net, optimizer, scheduler, world, ema)
        if progress is None:  # a failed restore may have loaded part of the state
            net, model, optimizer, scheduler, ema = build(p, len(train_y), device, world)

    live = None
    if world.main:
        from dvclive import Live  # rank 0 only: the other ranks never log

        # Logged into place as training goes, so a run shows while it trains; a killed
        # run leaves the epochs it did, and the next run starts the folder afresh.
        with writing(args.live_dir):  # DVCLive's own writes name no file when the disk is full
            live = Live(dir=str(args.live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
            for row in (progress.history if progress else []):  # epochs a resumed run did before
                log_row(live, row)

    done: list[Progress] = []  # the progress of the last whole epoch, for a run stopped on request

    def on_epoch(progress: Progress, seconds: float) -> None:
        done[:] = [progress]
        row = progress.history[-1]
        # The checkpoint first: when it can't be written, the summary still tells the truth.
        save_torch(args.checkpoint, checkpoint_state(progress, key, net, optimizer, scheduler, ema))
        write_json(args.summary, summary(progress))
        with writing(args.live_dir):
            log_row(live, row)
        print(f"epoch {progress.epoch}/{p['epochs']}: train loss {row['train/loss']:.4f} acc {row['train/acc']:.4f} "
              f"| val loss {row['val/loss']:.4f} acc {row['val/acc']:.4f} | {seconds:.1f} s", flush=True)

    stop_file = os.environ.get("FMNIST_STOP_FILE")

    def on_step(epoch: int, batches: int) -> None:
        if done and os.path.exists(stop_file):
            raise StopRequested()

    stopped = False
    try:
        progress = fit(p, net, model, optimizer, scheduler, train, val, device=device, dtype=dtype, world=world,
                       progress=progress, on_epoch=on_epoch, ema=ema,
                       on_step=on_step if stop_file and world.world == 1 else None)  # ranks would have to agree
    except StopRequested:
        progress, stopped = done[0], True
        print(f"stopped after epoch {progress.epoch} of {p['epochs']}: {stop_file} asks for it", flush=True)
    except RuntimeError as exc:
        # A peer that died shows here as a Gloo or NCCL transport error, not as a bug.
        if world.world == 1 or isinstance(exc, PipelineError) or not (
                isinstance(exc, dist.DistError) or "gloo" in str(exc).lower()):
            raise
        reason = re.sub(r"^\[[^]]*\]\s*", "", " ".join(str(exc).split())).split(". ")[0][:160]  # no source path
        raise PeersLost(f"rank {world.rank} of {world.world} lost the other training processes ({reason}); "
                        f"the first error above is the cause. With torchrun --max-restarts they all restart "
                        f"and resume from the last checkpoint") from None

    if world.main:
        with writing(args.live_dir):
            live.end()
        save_torch(args.model, {
            "state_dict": progress.best["state_dict"], "model": p["model"], "classes": list(CLASSES),
            "params": p, "epoch": progress.best["epoch"], "val_acc": progress.best["val_acc"],
            "data_sha256": key["data_sha256"]})
        write_json(args.summary, {**summary(progress), "stopped_early": True} if stopped else summary(progress))
        print(f"saved epoch {progress.best['epoch']} (val acc {progress.best['val_acc']:.4f}) to {args.model}")
    if world.world > 1:
        dist.destroy_process_group()


def log_row(live, row: dict) -> None:
    for name, value in row.items():
        live.log_metric(name, value)
    live.next_step()


if __name__ == "__main__":
    run(main)
