"""The training loop, on whole in-memory tensors: optimiser, schedule, epochs, the best epoch.

    p = load_params().train                                  # fmnist.params.Train
    state = build(p, train_x, device, dtype, world)          # net, model, optimizer, scheduler, ema; where
    progress = fit(state, (train_x, train_y), (val_x, val_y), p)

`fit` is what the train stage and the benchmark both run: epochs of `train_epoch` (the
classic loop: zero_grad, forward, loss, backward, step), each scored on the validation
set, keeping the epoch with the best validation accuracy.

Images stay uint8 (N, 28, 28) tensors on the device for the whole run; each batch is
indexed, normalised and augmented as one tensor, so there is no DataLoader, no worker
process and no per-image transform. The only waits for a GPU are every CHECK_EVERY
batches and at the end of an epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from fmnist.core.dataset import CLASSES
from fmnist.core.errors import ParamError, TrainingDiverged
from fmnist.model.classifier import Classifier, normalize, score
from fmnist.model.device import autocast, configure, to_device, to_device_layout
from fmnist.model.nets import build_model, fit_to_data
from fmnist.training.augment import Augmentation
from fmnist.training.distributed import World, per_rank_batch, shard, steps_per_epoch, wrap_ddp
from fmnist.training.ema import Ema

if TYPE_CHECKING:
    from fmnist.params import Train

FIT_IMAGES = 5000  # training images a net's data-fitted layers (its PatchWhitening) are computed from
CHECK_EVERY = 50  # batches between loss checks: each check waits for a GPU to catch up
VAL_BATCH = 1000  # images per forward pass when scoring the validation set
# One row of figures an epoch. Every loss is plain cross-entropy, comparable from train to
# val, but train/loss_smoothed: the label-smoothed loss the optimiser minimises (train.label_smoothing).
HISTORY_KEYS = ("train/loss", "train/loss_smoothed", "train/acc", "val/loss", "val/acc")


def seed_everything(seed: int) -> None:
    """Seed the global RNGs before the model's weights are drawn.

    CPU runs are then bit-for-bit repeatable for a fixed thread count. On CUDA, cuDNN
    picks convolution kernels whose backward passes use atomic adds, so the last bits
    of a GPU run still vary; forcing deterministic kernels would cost speed, so we don't.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, warmup: float = 0.25, start: float = 0.04, end: float = 1e-3) -> float:
    """The one-cycle schedule as a fraction of the peak learning rate at `step` (0-based).

    Linear warm-up from `start` over the first `warmup` of all steps, then cosine
    annealing down to `end` at the last step. Defined for any total >= 1, a single
    step included (it then runs at the peak).
    """
    rise = round(warmup * total)
    if step < rise:
        return start + (1 - start) * step / rise
    fall = total - rise - 1
    if fall <= 0:
        return 1.0
    t = min(1.0, (step - rise) / fall)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(p: Train, net: torch.nn.Module, total_steps: int):
    """The optimizer `train.optimizer` names and its one-cycle schedule over `total_steps`."""
    if p.optimizer == "sgd":
        optimizer = torch.optim.SGD(net.parameters(), lr=p.lr, momentum=p.momentum,
                                    nesterov=p.momentum > 0, weight_decay=p.weight_decay)
    else:
        optimizer = torch.optim.AdamW(net.parameters(), lr=p.lr, betas=(p.momentum, 0.999),
                                      weight_decay=p.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, max(1, total_steps)))
    return optimizer, scheduler


@dataclass
class TrainState:
    """The net being trained and everything that updates it: what a checkpoint saves."""
    net: torch.nn.Module     # the plain module: its weights are what is saved
    model: torch.nn.Module   # what runs the steps: `net` on the device, wrapped for DDP, compiled as asked
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: Ema | None          # the moving average of the weights (train.ema > 0): scored and saved instead
    device: torch.device
    dtype: torch.dtype | None = None  # autocast dtype (train.precision); None: fp32
    world: World = World()            # this process among those of a torchrun launch


def build(p: Train, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None,
          world: World = World()) -> TrainState:
    """A fresh TrainState for the params' train section and the training `images` (uint8 N x 28 x 28), on `device`.

    Seeded, and fitted to the first FIT_IMAGES images (the same on every rank), so every
    rank starts alike.
    """
    seed_everything(p.seed)
    configure(device)
    net = build_model(p.model, len(CLASSES))
    fit_to_data(net, normalize(images[:FIT_IMAGES].unsqueeze(1)))
    if world.size > 1 and device.type == "cuda":
        # BatchNorm statistics over the global batch, as one process computes them. Its
        # state_dict keys are BatchNorm's: the saved weights load into the plain net. On
        # CPU each process normalises its own share of the batch: SyncBatchNorm only runs
        # on GPUs (torch 2.14 raises ValueError for CPU tensors under Gloo).
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = wrap_ddp(to_device_layout(net, device), device, world)
    if p.compile:
        model = torch.compile(model)
    total = p.epochs * steps_per_epoch(len(images), p.batch_size, world.size)
    optimizer, scheduler = make_optimizer(p, net, total)
    ema = Ema(net, p.ema) if p.ema > 0 else None
    return TrainState(net, model, optimizer, scheduler, ema, device, dtype, world)


def epoch_generators(seed: int, epoch: int, rank: int = 0) -> tuple[torch.Generator, torch.Generator]:
    """(data order, augmentation) generators for one epoch; also seeds dropout.

    The order is the same on every rank (each then takes its own shard of it); the
    augmentation draws differ per rank. Deriving every stream from (seed, epoch, rank),
    instead of carrying one through the run, lets a resumed run continue exactly where
    an interrupted one stopped without saving any RNG state.
    """
    order_seed, = np.random.SeedSequence([seed, epoch]).generate_state(1)
    aug_seed, dropout_seed = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    torch.manual_seed(int(dropout_seed))
    return torch.Generator().manual_seed(int(order_seed)), torch.Generator().manual_seed(int(aug_seed))


def _check_finite(losses: torch.Tensor, epoch: int, n_batches: int, world: World,
                  net: torch.nn.Module | None = None) -> None:
    """TrainingDiverged naming the first non-finite loss of the epoch, or, when the losses
    are finite, a non-finite weight or BatchNorm statistic of `net`: a loss can stay finite
    while a BatchNorm's running variance overflows (normalising by it hides it from the
    loss), and such a net must not be kept either."""
    bad = (~torch.isfinite(losses)).nonzero()
    checked = len(losses) - 1  # the last batch done: the weights are checked as they are after it
    weights_ok = net is None or bool(torch.stack([torch.isfinite(t).all() for t in net.state_dict().values()
                                                  if t.is_floating_point()]).all())
    first = torch.tensor([int(bad[0]) if len(bad) else n_batches, n_batches if weights_ok else checked],
                         device=losses.device)
    if world.size > 1:  # every rank must stop together, or the others wait forever
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
    b, w = (int(v) for v in first)
    if b < n_batches:
        raise TrainingDiverged(f"training diverged: the loss became non-finite at epoch {epoch}, "
                               f"batch {b + 1} of {n_batches}; try a smaller train.lr")
    if w < n_batches:
        raise TrainingDiverged(f"training diverged: a weight or BatchNorm statistic became non-finite at epoch "
                               f"{epoch}, by batch {w + 1} of {n_batches}; try a smaller train.lr")


class EpochFigures(NamedTuple):
    """What `train_epoch` measured on the batches it trained on (augmented, dropout on)."""
    loss: float            # plain cross-entropy: the validation loss's measure
    acc: float             # a fraction
    loss_smoothed: float   # the label-smoothed cross-entropy the optimiser minimised


def train_epoch(state: TrainState, images: torch.Tensor, labels: torch.Tensor, epoch: int, p: Train,
                should_stop: Callable[[int, int], bool] | None = None) -> EpochFigures | None:
    """One pass over `images` in this epoch's random order; returns its mean losses and accuracy.

    Under torchrun each rank trains on its own shard of the order, train.batch_size /
    nproc images a step (DDP averages the gradients); the returned figures cover all
    ranks. They are measured on the augmented batches the model was trained on. The loss
    is plain cross-entropy, computed from the same logits as the label-smoothed loss that
    is optimised (no second forward pass): with smoothing 0.1 the optimised loss can't
    fall much below 0.5, so only the plain one compares with the validation loss.
    `should_stop(epoch, batches done)` is asked every CHECK_EVERY batches and after the
    last one (the benchmark scores the test set there, off the clock); when it says
    yes, the epoch is abandoned and None returned.

    The epoch's order and augmentation draws go to the device once, before the first
    step; a step itself asks nothing of the host, so a GPU runs up to CHECK_EVERY
    batches ahead of it, until `_check` waits for it.
    """
    model, optimizer, scheduler, ema, device, world = (state.model, state.optimizer, state.scheduler, state.ema,
                                                       state.device, state.world)
    batch_size = per_rank_batch(p.batch_size, world.size)
    model.train()
    order_gen, aug_gen = epoch_generators(p.seed, epoch, world.rank)
    order = shard(torch.randperm(len(images), generator=order_gen), world.rank, world.size)
    n_batches = -(-len(order) // batch_size)
    if n_batches == 0:  # fmnist.params.size_problems refuses this up front
        raise ParamError(f"train.nproc: {world.size} processes but only {len(images)} training images")
    augmentation = Augmentation(p.augment, len(order), aug_gen, device)
    order = to_device(order, device)
    losses = torch.zeros(n_batches, device=device)  # the optimised (label-smoothed) loss
    plain = torch.zeros(n_batches, device=device)   # plain cross-entropy of the same logits
    correct = torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{p.epochs}", unit="batch", leave=False,
               disable=None if world.main else True)  # None: a bar on a terminal, never in logs
    for b in bar:
        rows = slice(b * batch_size, (b + 1) * batch_size)
        idx = order[rows]
        x, y = augmentation(normalize(images[idx].unsqueeze(1)), rows), labels[idx]
        x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, state.dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=p.label_smoothing)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update()
        losses[b] = loss.detach()
        with torch.no_grad():
            plain[b] = F.cross_entropy(logits.detach().float(), y)
        correct += (logits.argmax(1) == y).sum()
        checked = (b + 1) % CHECK_EVERY == 0 or b + 1 == n_batches
        if checked and _check(state, losses[:b + 1], epoch, n_batches, bar, should_stop):
            return None
    # Each batch's loss weighs by its size, so a short last batch counts for less.
    sizes = torch.full((n_batches,), float(batch_size), device=device)
    sizes[-1] = len(order) - batch_size * (n_batches - 1)
    totals = torch.stack([(plain * sizes).sum(), correct.float(), (losses * sizes).sum(),
                          torch.tensor(float(len(order)), device=device)])
    if world.size > 1:
        dist.all_reduce(totals)
    return EpochFigures(*(float(total / totals[3]) for total in totals[:3]))


def _check(state: TrainState, losses: torch.Tensor, epoch: int, n_batches: int, bar: tqdm,
           should_stop: Callable[[int, int], bool] | None) -> bool:
    """The loop's host sync, every CHECK_EVERY batches and after the last: a diverged loss or
    net stops the run, the bar shows the last loss, `should_stop` is asked. True: stop the epoch."""
    _check_finite(losses, epoch, n_batches, state.world, state.net)
    bar.set_postfix(loss=f"{losses[-1].item():.4f}")
    if should_stop is None:
        return False
    if should_stop(epoch, len(losses)):
        return True
    state.model.train()  # it may have scored something (the benchmark scores the test set there)
    return False


@dataclass
class Progress:
    """Where a run stands after its last completed epoch: what a checkpoint holds besides
    the weights and optimizer state, and what `fit` returns."""
    epoch: int = 0
    history: list[dict] = field(default_factory=list)  # one row of HISTORY_KEYS figures an epoch
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0, "state_dict": None})


def fit(state: TrainState, train: tuple, val: tuple, p: Train, progress: Progress | None = None,
        on_epoch: Callable[[Progress, float], None] | None = None,
        should_stop: Callable[[int, int], bool] | None = None) -> Progress:
    """Train from `progress` (a fresh run, or a restored one) to train.epochs; keep the best epoch.

    After each epoch rank 0 scores the validation set and calls `on_epoch(progress,
    seconds)` (the train stage logs and checkpoints there). `should_stop` is passed on
    to `train_epoch`: a stopped run ends with the epochs it finished (progress.epoch <
    train.epochs). With an EMA, the averaged weights are
    scored and kept instead of the net's. Of epochs that tie on validation accuracy, the
    last is kept. Returns the final Progress, with the best
    epoch's weights (rank 0).
    """
    progress = progress or Progress()
    for epoch in range(progress.epoch + 1, p.epochs + 1):
        t0 = time.perf_counter()
        trained = train_epoch(state, *train, epoch, p, should_stop)
        if trained is None:
            return progress
        progress.epoch = epoch
        if not state.world.main:
            continue  # the other ranks go straight on; the next step's all-reduce waits for rank 0
        # Rank 0 scores the whole validation set with the plain module (no DDP collectives).
        kept = state.ema.module if state.ema is not None else state.net
        scored = score(Classifier(kept, mirror=False), *val, device=state.device, batch_size=VAL_BATCH,
                       dtype=state.dtype)
        progress.history.append({"train/loss": trained.loss, "train/loss_smoothed": trained.loss_smoothed,
                                 "train/acc": trained.acc, "val/loss": scored.loss, "val/acc": scored.accuracy})
        # A tie goes to the later epoch: it trained longer, at a lower learning rate, and with
        # a small validation set (data.val_size) ties are common.
        if scored.accuracy >= progress.best["val_acc"]:
            weights = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}
            progress.best = {"val_acc": scored.accuracy, "epoch": epoch, "state_dict": weights}
        if on_epoch is not None:
            on_epoch(progress, time.perf_counter() - t0)
    return progress
