"""Stage `train`: train the classifier with the params' `train` section; keep the best epoch.

    python stages/train.py data/prepared models/model.pt models/checkpoint.pt metrics/train

Logs train and validation loss and accuracy each epoch with DVCLive into LIVE_DIR.
Saves the weights of the epoch with the best validation accuracy to MODEL, together
with the params and class names they were trained with. After every epoch the full
training state goes to CHECKPOINT, from which `train.resume: true` continues an
interrupted run.

With `train.nproc: N` (N > 1) the script relaunches itself under torchrun as N
processes with DistributedDataParallel; it can also be launched so directly:

    torchrun --standalone --nproc_per_node=2 stages/train.py data/prepared models/model.pt \\
        models/checkpoint.pt metrics/train
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from dvclive import Live

from common import atomic_dir_entries, load_params, run, write_with
from fmnist.data import CLASSES
from fmnist.errors import DataError
from fmnist.model import build_model
from fmnist.training import (
    evaluate, init_distributed, make_optimizer, pick_device, pick_dtype, prepare_model, seed_everything, to_device,
    train_epoch,
)

# Params that don't change the numbers a run produces: a checkpoint made under other
# values of these can still be resumed.
NOT_RESULT_PARAMS = ("resume", "device", "compile")


def split_path(folder: Path, name: str) -> Path:
    path = folder / f"{name}.pt"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the prepare stage first (dvc repro)")
    return path


def load_split(folder: Path, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.load(split_path(folder, name), weights_only=True)
    # Moved once: the whole split stays on the device for the run.
    return to_device(data["images"], device), to_device(data["labels"], device)


def run_key(p: dict, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """What a checkpoint must match to be resumed: the params that shape results, and the data."""
    digest = hashlib.sha256(images.cpu().numpy().tobytes() + labels.cpu().numpy().tobytes()).hexdigest()
    return {"params": {k: v for k, v in p.items() if k not in NOT_RESULT_PARAMS}, "data_sha256": digest}


def log_epoch(live: Live, row: dict) -> None:
    for name, value in row.items():
        live.log_metric(name, value)
    live.next_step()


def relaunch_under_torchrun(nproc: int) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           __file__, *sys.argv[1:]]
    print(f"launching {nproc} processes: {' '.join(cmd[2:])}", flush=True)
    return subprocess.call(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path)
    parser.add_argument("model", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("live_dir", type=Path)
    args = parser.parse_args()
    p = load_params()["train"]
    if p["nproc"] > 1 and "WORLD_SIZE" not in os.environ:
        pick_device(p["device"])  # report a bad device or missing data here, once, not from N processes
        split_path(args.prepared, "train"), split_path(args.prepared, "val")
        sys.exit(relaunch_under_torchrun(p["nproc"]))

    world, device = init_distributed(pick_device(p["device"]))
    dtype = pick_dtype(p["precision"], device)
    if world.main:
        print(f"training on {device.type}" + (" (picked by train.device: auto)" if p["device"] == "auto" else "")
              + (" with bf16 autocast" if dtype else " in fp32")
              + (f", {world.world} processes" if world.world > 1 else ""))
    train_x, train_y = load_split(args.prepared, "train", device)
    val_x, val_y = load_split(args.prepared, "val", device)

    seed_everything(p["seed"])  # the same initial weights on every rank
    net = build_model(p["model"], len(CLASSES))
    model = prepare_model(net, device, compile=p["compile"], world=world)
    # train.batch_size is the global batch: each of the N processes takes 1/N of it.
    batch_size = max(1, p["batch_size"] // world.world)
    optimizer, scheduler = make_optimizer(p, net, steps_per_epoch=-(-(len(train_y) // world.world) // batch_size))

    key = run_key(p, train_x, train_y)
    start_epoch, history, best = 1, [], {"val_accuracy": -1.0, "epoch": 0, "state_dict": None}
    if p["resume"] and args.checkpoint.is_file():
        ckpt = torch.load(args.checkpoint, weights_only=True)
        if ckpt["key"] == key:
            net.load_state_dict(ckpt["state_dict"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]
            if world.main:
                print(f"resuming after epoch {ckpt['epoch']} from {args.checkpoint}")
        elif world.main:
            print(f"{args.checkpoint} was made with other train params or data; starting afresh")

    with contextlib.ExitStack() as stack:
        live = None
        if world.main:  # only rank 0 writes; DVCLive's files move to LIVE_DIR once the run is complete
            live_tmp = stack.enter_context(atomic_dir_entries(args.live_dir))
            live = stack.enter_context(Live(dir=str(live_tmp), save_dvc_exp=False, dvcyaml=None, report=None))
            for row in history:  # epochs a resumed run did before
                log_epoch(live, row)
        for epoch in range(start_epoch, p["epochs"] + 1):
            t0 = time.perf_counter()
            train_loss, train_acc = train_epoch(
                model, optimizer, scheduler, train_x, train_y, batch_size=batch_size, seed=p["seed"], epoch=epoch,
                augment=p["augment"], label_smoothing=p["label_smoothing"], device=device, dtype=dtype, world=world)
            if not world.main:
                continue  # the other ranks go straight on; the next step's all-reduce waits for rank 0
            # Rank 0 scores the whole validation set, with the plain module (no DDP collectives).
            val = evaluate(net, val_x, val_y, device=device, batch_size=1000, dtype=dtype)
            row = {"train/loss": train_loss, "train/acc": train_acc, "val/loss": val.loss, "val/acc": val.accuracy}
            history.append(row)
            if val.accuracy > best["val_accuracy"]:
                state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
                best = {"val_accuracy": val.accuracy, "epoch": epoch, "state_dict": state}
            log_epoch(live, row)
            print(f"epoch {epoch}/{p['epochs']}: train loss {train_loss:.4f} acc {train_acc:.4f} | "
                  f"val loss {val.loss:.4f} acc {val.accuracy:.4f} | {time.perf_counter() - t0:.1f} s", flush=True)
            write_with(args.checkpoint, lambda tmp: torch.save({
                "epoch": epoch, "key": key, "state_dict": net.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": history, "best": best}, tmp))
        if live is not None:
            live.log_metric("best/epoch", best["epoch"], plot=False)
            live.log_metric("best/val_acc", best["val_accuracy"], plot=False)

    if world.main:
        write_with(args.model, lambda tmp: torch.save({
            "state_dict": best["state_dict"], "model": p["model"], "classes": list(CLASSES),
            "params": p, "epoch": best["epoch"], "val_accuracy": best["val_accuracy"]}, tmp))
        print(f"saved epoch {best['epoch']} (val acc {best['val_accuracy']:.4f}) to {args.model}")
    if world.world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
