"""The training checkpoint: the full state after each epoch, and resuming from it.

    save_torch(path, checkpoint_state(progress, key, state))     # after every epoch
    progress = resume(path, key, state, steps)                    # train.resume: true; None: start afresh

A checkpoint holds the weights, the optimizer, schedule and moving-average states, the
history and the best epoch so far, and a `key` (run_key: the params that shape results,
the process count and the data's hash) that a run must match to resume from it. Every
part is checked before any of it is used, so a damaged or foreign checkpoint costs one
line and a fresh start, never a failure halfway through training.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from fmnist.core.errors import DataError, quoted
from fmnist.core.io import load_torch
from fmnist.model.nets import weights_problem
from fmnist.training.distributed import World, steps_per_epoch
from fmnist.training.loop import HISTORY_KEYS, Progress, TrainState, build

if TYPE_CHECKING:
    from fmnist.params import Train

class ResumeError(ValueError):
    """A checkpoint can't be resumed (the message says why); the caller starts afresh."""


# Params that don't change the numbers a run produces: a checkpoint made under other
# values of these can still be resumed.
NOT_RESULT_PARAMS = ("resume", "device", "compile", "max_restarts")


def run_key(p: Train, images: torch.Tensor, labels: torch.Tensor, world_size: int) -> dict:
    """What a checkpoint must match to be resumed: the params that shape results, the
    number of processes (it decides each one's shard) and the data."""
    digest = hashlib.sha256(images.numpy().tobytes() + labels.numpy().tobytes()).hexdigest()
    params = json.loads(p.model_dump_json(exclude=set(NOT_RESULT_PARAMS)))  # plain data, as the file holds it
    return {"params": params, "world": world_size, "data_sha256": digest}


def start(p: Train, path: Path, key: dict, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None,
          world: World) -> tuple[TrainState, Progress | None]:
    """A fresh run, or, with train.resume or after torchrun restarted the workers, the
    checkpoint's at `path` when it matches `key` (rank 0 reads it and shares it)."""
    state = build(p, images, device, dtype, world)
    if not (p.resume or world.restart):
        return state, None
    progress = None
    if world.main:
        if world.restart:
            print(f"torchrun restarted the workers (restart {world.restart}); resuming from the last checkpoint")
        progress = resume(path, key, state, steps_per_epoch(len(images), p.batch_size, world.size))
    progress = share_restored(progress, state, world)
    if progress is None:  # a failed restore may have loaded part of the state
        state = build(p, images, device, dtype, world)
    return state, progress


def max_checkpoint_bytes(net: torch.nn.Module, epochs: int) -> int:
    """The most bytes a checkpoint of `net` (train.model's net) over `epochs` epochs can take.

    It holds at most five copies of the weights: the weights, the best epoch's, the moving
    average's and the optimizer's per-weight state (SGD's momentum: one copy; AdamW's two
    moments: two); then the history, a row of a few numbers an epoch (1 KiB is ample),
    and 1 MiB for the schedule, the key and the zip records (tens of KB measured).
    """
    weights = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    return 5 * weights + 1024 * epochs + (1 << 20)


def resume(path: Path, key: dict, state: TrainState, steps: int) -> Progress | None:
    """The Progress of a checkpoint that matches this run, loaded into it; None (say why) otherwise."""
    if not path.exists():
        print(f"train.resume: no checkpoint at {path}; starting afresh")
        return None
    epochs = int(key["params"]["epochs"])
    limit = max_checkpoint_bytes(state.net, epochs)
    try:
        progress = restore(load_torch(path, "starting afresh", limit, "a checkpoint of this run"), key, state, steps,
                           epochs)
    except DataError as exc:
        print(f"train.resume: {exc}")
        return None
    except ResumeError as exc:
        print(f"train.resume: {path} {exc}; starting afresh")
        return None
    print(f"train.resume: resuming after epoch {progress.epoch} from {path}")
    return progress


def checkpoint_state(progress: Progress, key: dict, state: TrainState) -> dict:
    """The full training state after `progress.epoch` epochs, as `restore` reads it back.

    `key` is what a run must match to resume from it (the train stage's params, process
    count and data hash).
    """
    return {"epoch": progress.epoch, "key": key, "state_dict": state.net.state_dict(),
            "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
            "ema": None if state.ema is None else state.ema.state_dict(), "history": progress.history,
            "best": progress.best}


def restore(checkpoint: object, key: dict, state: TrainState, steps: int, epochs: int) -> Progress:
    """Load a checkpoint into a freshly built run (`steps` optimizer steps an epoch, `epochs`
    epochs: train.epochs) and return its Progress.

    Raises ResumeError, whose message completes "the checkpoint ...", when it isn't one,
    was made for another run (its key differs from `key`) or is damaged in any way:
    everything the loop later reads back is checked here, so training can't fail on it
    halfway. After a ResumeError the run may be half loaded: build a fresh one.
    """
    if not isinstance(checkpoint, dict) or not {"key", "epoch"} <= set(checkpoint):
        raise ResumeError("is not a training checkpoint")
    try:
        same = bool(checkpoint["key"] == key)
    except Exception:  # noqa: BLE001 - a damaged key may not even compare
        same = False
    if not same:
        raise ResumeError("was made with other train params, process count or data")
    try:
        return _restore(checkpoint, state, steps, epochs)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint fails in many ways
        raise ResumeError(f"is damaged ({quoted(str(exc), 200) or type(exc).__name__})") from None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _restore(checkpoint: dict, state: TrainState, steps: int, epochs: int) -> Progress:
    net, optimizer, scheduler, ema = state.net, state.optimizer, state.scheduler, state.ema
    epoch, history, best = checkpoint["epoch"], checkpoint["history"], checkpoint["best"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise ValueError(f"epoch {epoch!r:.40}, expected a whole number >= 1")
    if epoch > epochs:  # before the history's rows are read and the schedule replayed (epoch x steps steps)
        raise ValueError(f"epoch {epoch!r:.40}, more than train.epochs: {epochs}")
    if not isinstance(history, list) or len(history) != epoch:
        raise ValueError(f"{epoch} epochs done but the history is {history!r:.40}")
    for row in history:
        if isinstance(row, dict) and set(row) != set(HISTORY_KEYS):  # older code logged other figures
            raise ValueError(f"a row of history holds {', '.join(sorted(map(str, row)))[:120]}; "
                             f"this code's rows hold {', '.join(sorted(HISTORY_KEYS))}")
        if not isinstance(row, dict) or not all(map(_is_number, row.values())):
            raise ValueError(f"a row of history is {row!r:.80}")
    if not isinstance(best, dict) or set(best) != {"val_acc", "epoch", "state_dict"}:
        raise ValueError(f"'best' is {best!r:.60}")
    if not isinstance(best["epoch"], int) or not 1 <= best["epoch"] <= epoch \
            or best["val_acc"] != history[best["epoch"] - 1]["val/acc"]:
        raise ValueError(f"the best epoch {best['epoch']!r:.20} doesn't match the history")
    averaged = checkpoint["ema"]
    if (ema is None and averaged is not None) or (ema is not None and (
            not isinstance(averaged, dict) or set(averaged) != {"updates", "state_dict"}
            or averaged["updates"] != epoch * steps)):
        raise ValueError(f"the moving average of the weights is {averaged!r:.60}")
    for what, weights in (("weights", checkpoint["state_dict"]), ("best weights", best["state_dict"]),
                          ("averaged weights", averaged["state_dict"] if ema is not None else net.state_dict())):
        problem = weights_problem(weights, net)
        if problem:
            raise ValueError(f"{what}: {problem}")
    net.load_state_dict(checkpoint["state_dict"])
    if ema is not None:
        ema.load_state_dict(averaged)

    # The schedule is a function of the step: replay it to where the checkpoint says it
    # is, then the optimizer's settings and learning rate must be exactly this run's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": on purpose
        for _ in range(epoch * steps):
            scheduler.step()
    saved = checkpoint["optimizer"]
    if not isinstance(saved, dict) or saved.get("param_groups") != optimizer.state_dict()["param_groups"]:
        raise ValueError("the optimizer's settings or learning rate differ from this run's")
    if checkpoint["scheduler"] != scheduler.state_dict():
        raise ValueError(f"the schedule isn't where {epoch} epoch(s) of this run leave it")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_weight = saved.get("state")
    if not isinstance(per_weight, dict) or set(per_weight) != set(range(len(params))) \
            or not all(isinstance(s, dict) for s in per_weight.values()) \
            or len({frozenset(s) for s in per_weight.values()}) != 1:
        raise ValueError("the optimizer's state doesn't cover every weight alike")
    for i, param in enumerate(params):
        for name, value in per_weight[i].items():
            shape = () if name == "step" else param.shape  # AdamW's step count is a scalar
            if not isinstance(value, torch.Tensor) or value.shape != shape or not value.is_floating_point() \
                    or not bool(torch.isfinite(value).all()):
                raise ValueError(f"optimizer state {name!r} doesn't fit its weight")
    optimizer.load_state_dict(saved)
    return Progress(epoch, history, best)


def share_restored(progress: Progress | None, state: TrainState, world: World) -> Progress | None:
    """Give every rank the run rank 0 restored, or its decision to start afresh (None).

    Only rank 0 reads the checkpoint: it is the one that writes it, and another
    machine's copy is missing or older. The other ranks take rank 0's weights,
    optimizer and scheduler state and epoch, so all of them go on from the same point;
    the history and best epoch stay with rank 0, which alone uses them.
    """
    if world.size == 1:
        return progress
    net, optimizer, scheduler, ema = state.net, state.optimizer, state.scheduler, state.ema
    box = [None]
    if world.main and progress is not None:
        buffer = io.BytesIO()  # serialised here, so each rank loads it onto its own device
        torch.save({"state_dict": net.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": progress.epoch,
                    "ema": None if ema is None else ema.state_dict()}, buffer)
        box = [buffer.getvalue()]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None or world.main:
        return None if box[0] is None else progress
    shared = torch.load(io.BytesIO(box[0]), map_location="cpu", weights_only=True)
    net.load_state_dict(shared["state_dict"])
    optimizer.load_state_dict(shared["optimizer"])
    scheduler.load_state_dict(shared["scheduler"])
    if ema is not None:
        ema.load_state_dict(shared["ema"])
    return Progress(epoch=shared["epoch"])
