"""Device choice, the training loop and evaluation, on whole in-memory tensors.

    device = pick_device("auto")
    net, model, optimizer, scheduler = build(p, len(train_y), device)
    progress = fit(p, net, model, optimizer, scheduler, (train_x, train_y), (val_x, val_y), device=device)
    result = evaluate(net, images, labels, device=device, batch_size=1000)

`fit` is what the train stage and the benchmark both run: epochs of `train_epoch` (the
classic loop: zero_grad, forward, loss, backward, step), each scored on the validation
set, with hooks after each epoch and every CHECK_EVERY steps.

Images stay uint8 (N, 28, 28) tensors on `device` for the whole run; each batch is
indexed, normalised and augmented as one tensor, so there is no DataLoader, no worker
process and no per-image transform.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import random
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fmnist.data import CLASSES, normalize
from fmnist.data import augment as augment_batch
from fmnist.errors import ParamError, TrainingDiverged
from fmnist.model import build_model, weights_problem

CHECK_EVERY = 50  # batches between loss checks: each check waits for a GPU to catch up
STORE_TIMEOUT = timedelta(minutes=30)  # how long ranks wait for each other to start (Gloo's default)


def pick_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; a named device that isn't there is an error."""
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if has[kind]))
    if name not in has:
        raise ParamError(f"train.device: got {name!r}, expected one of auto, cpu, cuda, mps")
    if not has[name]:
        raise ParamError(f"train.device: {name} was asked for but this machine has no {name} device; "
                         f"use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed the global RNGs before the model's weights are drawn.

    CPU runs are then bit-for-bit repeatable for a fixed thread count. On CUDA, cuDNN
    picks convolution kernels whose backward passes use atomic adds, so the last bits
    of a GPU run still vary; forcing deterministic kernels would cost speed, so we don't.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device`; to a GPU from pinned memory without blocking the host."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def prepare_model(model: torch.nn.Module, device: torch.device, compile: bool = False,
                  world: Dist | None = None) -> torch.nn.Module:
    """Move `model` to `device` in channels_last layout (faster convolutions on CPU and GPU);
    wrap it in DistributedDataParallel under torchrun, and compile it if asked."""
    model = model.to(device, memory_format=torch.channels_last)
    if world is not None and world.world > 1:
        # On CPU, one gradient bucket per parameter: DDP otherwise starts with one bucket and
        # re-forms it in gradient-ready order after its first step, so a restarted run (a new
        # DDP) would add 3+ ranks' gradients in another order, and differ in the last bits.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        bucket_cap_mb_list=[0] if device.type == "cpu" else None)
    return torch.compile(model) if compile else model


def _cpu_has_bf16() -> bool:
    try:  # AVX512-BF16 or AMX; without them bf16 convolutions run slower than fp32
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision`: None means plain fp32.

    `auto` takes bf16 where the hardware runs it natively (CUDA GPUs from Ampere on,
    CPUs with AVX512-BF16 or AMX), about twice as fast there as fp32; fp32 elsewhere.
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and _cpu_has_bf16():
            return torch.bfloat16
    return None


def lr_factor(step: int, total: int, warmup: float = 0.25, start: float = 0.04, end: float = 1e-3) -> float:
    """The one-cycle schedule as a fraction of the peak learning rate at `step` (0-based).

    Linear warm-up from `start` over the first `warmup` of all steps, then cosine
    annealing down to `end` at the last step. Defined for any total >= 1, a single
    step included (it then runs at the peak).
    """
    rise = int(round(warmup * total))
    if step < rise:
        return start + (1 - start) * step / rise
    fall = total - rise - 1
    if fall <= 0:
        return 1.0
    t = min(1.0, (step - rise) / fall)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * t))


def make_optimizer(p: dict, net: torch.nn.Module, total_steps: int):
    """The optimizer `train.optimizer` names and its one-cycle schedule over `total_steps`."""
    if p["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(net.parameters(), lr=p["lr"], momentum=p["momentum"],
                                    nesterov=p["momentum"] > 0, weight_decay=p["weight_decay"])
    else:
        optimizer = torch.optim.AdamW(net.parameters(), lr=p["lr"], betas=(p["momentum"], 0.999),
                                      weight_decay=p["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, max(1, total_steps)))
    return optimizer, scheduler


def per_rank_batch(batch_size: int, world: int = 1) -> int:
    """Images each of `world` processes takes a step: `train.batch_size` is the global batch."""
    return max(1, batch_size // world)


def shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s part of an epoch's order: every rank gets len(order) // world items.

    Equal shards give every rank the same number of steps, which DDP needs (each step
    waits for all ranks); the len(order) % world items left over sit this epoch out.
    """
    return order[:len(order) - len(order) % world][rank::world]


def steps_per_epoch(n_train: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps in one epoch, on every rank: its shard in batches of per_rank_batch."""
    return -(-(n_train // world) // per_rank_batch(batch_size, world))


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a torchrun launch; rank 0 of 1 when run alone.

    `restart` is how many times torchrun has restarted the workers (the highest
    TORCHELASTIC_RESTART_COUNT of all ranks: each node's agent counts its own).
    """
    rank: int = 0
    world: int = 1
    restart: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun set up (NCCL on CUDA, Gloo on CPU), if any.

    Returns this process's Dist and its device (cuda:LOCAL_RANK on a multi-GPU node).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if world == 1:
        return Dist(restart=restart), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    rank = int(os.environ["RANK"])
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # The store torchrun's agent serves outlives the workers: see _fresh_namespace.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=False, timeout=STORE_TIMEOUT)
        dist.init_process_group(backend, store=_fresh_namespace(store, rank, world), rank=rank, world_size=world)
    else:
        dist.init_process_group(backend)
    restarts = torch.tensor([restart], device=device)
    dist.all_reduce(restarts, op=dist.ReduceOp.MAX)
    return Dist(dist.get_rank(), dist.get_world_size(), int(restarts)), device


def _fresh_namespace(store: dist.Store, rank: int, world: int, poll: float = 0.05) -> dist.Store:
    """A part of torchrun's store that no earlier attempt of this run has written to.

    torchrun's c10d rendezvous (--standalone, multi-node) keeps one store for the
    agent's whole life, and torch 2.14 hands it to the workers of every attempt
    without a per-attempt prefix. After a restart, the keys the dead workers' process
    group wrote (each rank's Gloo address, NCCL's unique id) are still there, and the
    new workers connect to the dead ones (Gloo connectFullMesh: connection refused).
    TORCHELASTIC_RESTART_COUNT can't name the attempt, because each node's agent
    counts its own restarts. So rank 0 draws a random name and gives it to each rank
    under a key named by a nonce that rank has just drawn: nothing stale can answer.
    Polls rather than blocks, so SIGTERM from the agent is handled at once.
    """
    def wait_for(key: str) -> None:
        deadline = time.monotonic() + STORE_TIMEOUT.total_seconds()
        while not store.check([key]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {rank}: no answer from the other ranks in {STORE_TIMEOUT} ({key})")
            time.sleep(poll)

    if rank != 0:
        nonce = uuid.uuid4().hex
        store.set(f"fmnist/ask/{rank}", nonce)
        wait_for(f"fmnist/answer/{nonce}")
        name = store.get(f"fmnist/answer/{nonce}").decode()
        store.set(f"fmnist/{name}/ready/{rank}", "1")
        return dist.PrefixStore(f"fmnist/{name}", store)
    name = uuid.uuid4().hex
    answered: dict[int, bytes] = {}
    waiting = set(range(1, world))
    deadline = time.monotonic() + STORE_TIMEOUT.total_seconds()
    while waiting:
        for r in sorted(waiting):
            if store.check([f"fmnist/{name}/ready/{r}"]):
                waiting.discard(r)
            elif store.check([f"fmnist/ask/{r}"]):
                nonce = store.get(f"fmnist/ask/{r}")
                if answered.get(r) != nonce:  # may be a dead worker's: answering it is harmless
                    store.set(f"fmnist/answer/{nonce.decode()}", name)
                    answered[r] = nonce
        if waiting:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank 0: ranks {sorted(waiting)} did not join in {STORE_TIMEOUT}")
            time.sleep(poll)
    return dist.PrefixStore(f"fmnist/{name}", store)


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


class Ema:
    """An exponential moving average of a net's weights and BatchNorm statistics.

    `module` is a copy of the net that holds the average; it is what gets scored and
    saved when `train.ema` is on. The decay warms up as min(decay, (1 + t) / (10 + t))
    after t updates, so the random initial weights fade out fast. Its state (the
    average and t) goes into the checkpoint, so a resumed run averages exactly as an
    uninterrupted one.
    """

    def __init__(self, net: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(net).requires_grad_(False).eval()
        # Tensors that share storage with the modules' own, so in-place updates reach them.
        averaged, current = self.module.state_dict(), net.state_dict()
        floats = [k for k, v in averaged.items() if v.is_floating_point()]
        self._floats = [averaged[k] for k in floats], [current[k] for k in floats]
        self._others = [(averaged[k], current[k]) for k in averaged if k not in floats]  # BatchNorm's counters

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(*self._floats, 1 - decay)
        for averaged, current in self._others:
            averaged.copy_(current)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "state_dict": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])


def _check_finite(losses: torch.Tensor, epoch: int, n_batches: int, world: Dist) -> None:
    bad = (~torch.isfinite(losses)).nonzero()
    first = torch.tensor([int(bad[0]) if len(bad) else n_batches], device=losses.device)
    if world.world > 1:  # every rank must stop together, or the others wait forever
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
    b = int(first)
    if b < n_batches:
        raise TrainingDiverged(f"training diverged: the loss became non-finite at epoch {epoch}, "
                               f"batch {b + 1} of {n_batches}; try a smaller train.lr")


def train_epoch(model, optimizer, scheduler, images, labels, *, batch_size: int, seed: int, epoch: int,
                augment: bool, label_smoothing: float, device: torch.device, dtype: torch.dtype | None = None,
                world: Dist = Dist(), progress: bool = True, shift: int = 0, erase: float = 0.0,
                ema: Ema | None = None, on_step: Callable[[int, int], None] | None = None) -> tuple[float, float]:
    """One pass over `images` in this epoch's random order; returns (mean loss, accuracy).

    Under torchrun each rank trains on its own shard of the order, `batch_size` images
    a step (DDP averages the gradients); the returned figures cover all ranks.
    Accuracy is measured on the augmented batches the model was trained on: flipped
    with `augment`, shifted and erased as `shift` and `erase` ask (fmnist.data.augment).
    `ema` is updated after every step.
    `on_step(epoch, batches done)` is called every CHECK_EVERY batches and after the
    last one (the benchmark scores the test set there, off the clock).
    """
    model.train()
    order_gen, aug_gen = epoch_generators(seed, epoch, world.rank)
    order = torch.randperm(len(images), generator=order_gen)
    order = to_device(shard(order, world.rank, world.world), device)
    n_batches = -(-len(order) // batch_size)
    if n_batches == 0:  # fmnist.params.size_problems refuses this up front
        raise ParamError(f"train.nproc: {world.world} processes but only {len(images)} training images")
    losses = torch.zeros(n_batches, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False,
               disable=None if progress and world.main else True)
    for b in bar:
        idx = order[b * batch_size:(b + 1) * batch_size]
        x, y = normalize(images[idx]), labels[idx]
        if augment or shift or erase:
            x = augment_batch(x, aug_gen, flip=augment, shift=shift, erase=erase)
        x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update()
        losses[b] = loss.detach()
        correct += (logits.argmax(1) == y).sum()
        if (b + 1) % CHECK_EVERY == 0 or b + 1 == n_batches:  # a sync point: a GPU runs ahead in between
            _check_finite(losses[:b + 1], epoch, n_batches, world)
            bar.set_postfix(loss=f"{losses[b].item():.4f}")
            if on_step is not None:
                on_step(epoch, b + 1)
                model.train()
    # Each batch's loss weighs by its size, so a short last batch counts for less.
    sizes = torch.full((n_batches,), float(batch_size), device=device)
    sizes[-1] = len(order) - batch_size * (n_batches - 1)
    totals = torch.stack([(losses * sizes).sum(), correct.float(), torch.tensor(float(len(order)), device=device)])
    if world.world > 1:
        dist.all_reduce(totals)
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    probs: torch.Tensor  # (N, classes) softmax probabilities, on the CPU


@torch.no_grad()
def evaluate(model, images, labels, *, device: torch.device, batch_size: int, tta: bool = False,
             dtype: torch.dtype | None = None) -> Evaluation:
    """Mean cross-entropy, accuracy and class probabilities of `model` on a whole set.

    With `tta`, each image's probabilities average those of the image and its mirror
    image (garments are left-right symmetric classes).
    """
    model.eval()
    probs = []
    for start in range(0, len(images), batch_size):
        x = normalize(to_device(images[start:start + batch_size], device)).contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            p = model(x).float().softmax(1)
            if tta:
                p = (p + model(x.flip(3)).float().softmax(1)) / 2
        probs.append(p.cpu())
    probs = torch.cat(probs) if probs else torch.zeros(0, 10)
    labels = labels.cpu()
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item() if len(labels) else float("nan")
    accuracy = (probs.argmax(1) == labels).float().mean().item() if len(labels) else float("nan")
    return Evaluation(loss=loss, accuracy=accuracy, probs=probs)


@dataclass
class Progress:
    """Where a run stands after its last completed epoch: what a checkpoint holds besides
    the weights and optimizer state, and what `fit` returns."""
    epoch: int = 0
    history: list[dict] = field(default_factory=list)  # one row of train/val figures an epoch
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0, "state_dict": None})


class ResumeError(ValueError):
    """A checkpoint can't be resumed (the message says why); the caller starts afresh."""


def build(p: dict, n_train: int, device: torch.device, world: Dist = Dist()):
    """(net, model, optimizer, scheduler, ema) for the params' train section and `n_train` images.

    `net` is the plain module; `model` is what trains: `net` on `device`, wrapped for
    DDP and compiled as asked; `ema` averages `net`'s weights when `train.ema` > 0
    (None otherwise), and is then what gets scored and saved. Seeded, so every rank
    starts alike.
    """
    seed_everything(p["seed"])
    net = build_model(p["model"], len(CLASSES))
    if world.world > 1 and device.type == "cuda":
        # BatchNorm statistics over the global batch, as one process computes them. Its
        # state_dict keys are BatchNorm's: the saved weights load into the plain net. On
        # CPU each process normalises its own share of the batch: SyncBatchNorm only runs
        # on GPUs (torch 2.14 raises ValueError for CPU tensors under Gloo).
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = prepare_model(net, device, compile=p["compile"], world=world)
    total = p["epochs"] * steps_per_epoch(n_train, p["batch_size"], world.world)
    optimizer, scheduler = make_optimizer(p, net, total)
    ema = Ema(net, p["ema"]) if p["ema"] > 0 else None
    return net, model, optimizer, scheduler, ema


HISTORY_KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")


def checkpoint_state(progress: Progress, key: dict, net, optimizer, scheduler, ema: Ema | None = None) -> dict:
    """The full training state after `progress.epoch` epochs, as `restore` reads it back.

    `key` is what a run must match to resume from it (the train stage's params, process
    count and data hash).
    """
    return {"epoch": progress.epoch, "key": key, "state_dict": net.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "ema": None if ema is None else ema.state_dict(), "history": progress.history, "best": progress.best}


def restore(checkpoint: object, key: dict, net, optimizer, scheduler, steps_per_epoch: int,
            ema: Ema | None = None) -> Progress:
    """Load a checkpoint into a freshly built run and return its Progress.

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
        return _restore(checkpoint, net, optimizer, scheduler, steps_per_epoch, ema)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint fails in many ways
        raise ResumeError(f"is damaged ({' '.join(str(exc).split())[:200] or type(exc).__name__})") from None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _restore(checkpoint: dict, net, optimizer, scheduler, steps_per_epoch: int, ema: Ema | None) -> Progress:
    epoch, history, best = checkpoint["epoch"], checkpoint["history"], checkpoint["best"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise ValueError(f"epoch {epoch!r:.40}, expected a whole number >= 1")
    if not isinstance(history, list) or len(history) != epoch:
        raise ValueError(f"{epoch} epochs done but the history is {history!r:.40}")
    for row in history:
        if not isinstance(row, dict) or set(row) != set(HISTORY_KEYS) or not all(map(_is_number, row.values())):
            raise ValueError(f"a row of history is {row!r:.80}")
    if not isinstance(best, dict) or set(best) != {"val_acc", "epoch", "state_dict"}:
        raise ValueError(f"'best' is {best!r:.60}")
    if not isinstance(best["epoch"], int) or not 1 <= best["epoch"] <= epoch \
            or best["val_acc"] != history[best["epoch"] - 1]["val/acc"]:
        raise ValueError(f"the best epoch {best['epoch']!r:.20} doesn't match the history")
    averaged = checkpoint["ema"]
    if ema is None and averaged is not None or ema is not None and (
            not isinstance(averaged, dict) or set(averaged) != {"updates", "state_dict"}
            or averaged["updates"] != epoch * steps_per_epoch):
        raise ValueError(f"the moving average of the weights is {averaged!r:.60}")
    for what, state in (("weights", checkpoint["state_dict"]), ("best weights", best["state_dict"]),
                        ("averaged weights", averaged["state_dict"] if ema is not None else net.state_dict())):
        problem = weights_problem(state, net)
        if problem:
            raise ValueError(f"{what}: {problem}")
    net.load_state_dict(checkpoint["state_dict"])
    if ema is not None:
        ema.load_state_dict(averaged)

    # The schedule is a function of the step: replay it to where the checkpoint says it
    # is, then the optimizer's settings and learning rate must be exactly this run's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": on purpose
        for _ in range(epoch * steps_per_epoch):
            scheduler.step()
    saved = checkpoint["optimizer"]
    if not isinstance(saved, dict) or saved.get("param_groups") != optimizer.state_dict()["param_groups"]:
        raise ValueError("the optimizer's settings or learning rate differ from this run's")
    if checkpoint["scheduler"] != scheduler.state_dict():
        raise ValueError(f"the schedule isn't where {epoch} epoch(s) of this run leave it")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = saved.get("state")
    if not isinstance(state, dict) or set(state) != set(range(len(params))) \
            or not all(isinstance(s, dict) for s in state.values()) \
            or len({frozenset(s) for s in state.values()}) != 1:
        raise ValueError("the optimizer's state doesn't cover every weight alike")
    for i, param in enumerate(params):
        for name, value in state[i].items():
            shape = () if name == "step" else param.shape  # AdamW's step count is a scalar
            if not isinstance(value, torch.Tensor) or value.shape != shape or not value.is_floating_point() \
                    or not bool(torch.isfinite(value).all()):
                raise ValueError(f"optimizer state {name!r} doesn't fit its weight")
    optimizer.load_state_dict(saved)
    return Progress(epoch, history, best)


def share_restored(progress: Progress | None, net, optimizer, scheduler, world: Dist,
                   ema: Ema | None = None) -> Progress | None:
    """Give every rank the run rank 0 restored, or its decision to start afresh (None).

    Only rank 0 reads the checkpoint: it is the one that writes it, and another
    machine's copy is missing or older. The other ranks take rank 0's weights,
    optimizer and scheduler state and epoch, so all of them go on from the same point;
    the history and best epoch stay with rank 0, which alone uses them.
    """
    if world.world == 1:
        return progress
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
    state = torch.load(io.BytesIO(box[0]), map_location="cpu", weights_only=True)
    net.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    return Progress(epoch=state["epoch"])


def fit(p: dict, net, model, optimizer, scheduler, train: tuple, val: tuple, *, device: torch.device,
        dtype: torch.dtype | None = None, world: Dist = Dist(), progress: Progress | None = None,
        on_epoch: Callable[[Progress, float], None] | None = None,
        on_step: Callable[[int, int], None] | None = None, show_progress: bool = True,
        ema: Ema | None = None) -> Progress:
    """Train from `progress` (a fresh run, or a restored one) to `p["epochs"]`; keep the best epoch.

    After each epoch rank 0 scores the validation set and calls `on_epoch(progress,
    seconds)` (the train stage logs and checkpoints there); `on_step` is passed on to
    `train_epoch`. With `ema`, the averaged weights are scored and kept instead of
    `net`'s. Returns the final Progress, with the best epoch's weights (rank 0).
    """
    progress = progress or Progress()
    per_rank = per_rank_batch(p["batch_size"], world.world)
    for epoch in range(progress.epoch + 1, p["epochs"] + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = train_epoch(
            model, optimizer, scheduler, *train, batch_size=per_rank, seed=p["seed"], epoch=epoch,
            augment=p["augment"], label_smoothing=p["label_smoothing"], device=device, dtype=dtype, world=world,
            progress=show_progress, shift=p["shift"], erase=p["erase"], ema=ema, on_step=on_step)
        progress.epoch = epoch
        if not world.main:
            continue  # the other ranks go straight on; the next step's all-reduce waits for rank 0
        # Rank 0 scores the whole validation set with the plain module (no DDP collectives).
        kept = ema.module if ema is not None else net
        scored = evaluate(kept, *val, device=device, batch_size=1000, dtype=dtype)
        progress.history.append({"train/loss": train_loss, "train/acc": train_acc,
                                 "val/loss": scored.loss, "val/acc": scored.accuracy})
        if scored.accuracy > progress.best["val_acc"]:
            state = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}
            progress.best = {"val_acc": scored.accuracy, "epoch": epoch, "state_dict": state}
        if on_epoch is not None:
            on_epoch(progress, time.perf_counter() - t0)
    return progress
