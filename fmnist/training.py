"""Device choice, the training loop and evaluation, on whole in-memory tensors.

    device = pick_device("auto")
    loss, acc = train_epoch(model, optimizer, scheduler, images, labels, ...)
    result = evaluate(model, images, labels, device=device, batch_size=1000)

Images stay uint8 (N, 28, 28) tensors on `device` for the whole run; each batch is
indexed, normalised and augmented as one tensor, so there is no DataLoader, no worker
process and no per-image transform.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fmnist.data import augment as augment_batch
from fmnist.data import normalize
from fmnist.errors import ParamError, TrainingDiverged

CHECK_EVERY = 50  # batches between loss checks: each check waits for a GPU to catch up


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


def seed_everything(seed: int) -> torch.Generator:
    """Seed the global RNGs (weight init, dropout) and return the generator for data order.

    CPU runs are then bit-for-bit repeatable for a fixed thread count. On CUDA, cuDNN
    picks convolution kernels whose backward passes use atomic adds, so the last bits
    of a GPU run still vary; forcing deterministic kernels would cost speed, so we don't.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def prepare_model(model: torch.nn.Module, device: torch.device, compile: bool = False) -> torch.nn.Module:
    """Move `model` to `device` in channels_last layout (faster convolutions on CPU and GPU)."""
    model = model.to(device, memory_format=torch.channels_last)
    return torch.compile(model) if compile else model


def autocast(device: torch.device):
    # bf16 autocast on CUDA only: CPUs without AMX run bf16 convolutions slower than fp32.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_finite(losses: torch.Tensor, epoch: int, n_batches: int) -> None:
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        b = int(bad[0])
        raise TrainingDiverged(f"training diverged: the loss became {losses[b].item()} at epoch {epoch}, "
                               f"batch {b + 1} of {n_batches}; try a smaller train.lr")


def train_epoch(model, optimizer, scheduler, images, labels, *, batch_size: int, generator: torch.Generator,
                augment: bool, label_smoothing: float, device: torch.device, epoch: int,
                progress: bool = True) -> tuple[float, float]:
    """One pass over `images` in a fresh random order; returns (mean loss, accuracy).

    Accuracy is measured on the augmented batches the model was trained on.
    """
    model.train()
    order = torch.randperm(len(images), generator=generator).to(device)
    n_batches = (len(order) + batch_size - 1) // batch_size
    losses = torch.zeros(n_batches, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bar = tqdm(range(n_batches), desc=f"epoch {epoch}", unit="batch", leave=False, disable=None if progress else True)
    for b in bar:
        idx = order[b * batch_size:(b + 1) * batch_size]
        x, y = normalize(images[idx]), labels[idx]
        if augment:
            x = augment_batch(x, generator)
        x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses[b] = loss.detach()
        correct += (logits.argmax(1) == y).sum()
        if (b + 1) % CHECK_EVERY == 0 or b + 1 == n_batches:
            _check_finite(losses[:b + 1], epoch, n_batches)
            bar.set_postfix(loss=f"{losses[b].item():.4f}")
    # Each batch's loss weighs by its size, so a short last batch counts for less.
    sizes = torch.full((n_batches,), float(batch_size), device=device)
    sizes[-1] = len(order) - batch_size * (n_batches - 1)
    return float((losses * sizes).sum() / len(order)), float(correct) / len(order)


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    probs: torch.Tensor  # (N, classes) softmax probabilities, on the CPU


@torch.no_grad()
def evaluate(model, images, labels, *, device: torch.device, batch_size: int, tta: bool = False) -> Evaluation:
    """Mean cross-entropy, accuracy and class probabilities of `model` on a whole set.

    With `tta`, each image's probabilities average those of the image and its mirror
    image (garments are left-right symmetric classes).
    """
    model.eval()
    probs = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        with autocast(device):
            p = model(x).float().softmax(1)
            if tta:
                p = (p + model(x.flip(3)).float().softmax(1)) / 2
        probs.append(p.cpu())
    probs = torch.cat(probs) if probs else torch.zeros(0, 10)
    labels = labels.cpu()
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item() if len(labels) else float("nan")
    accuracy = (probs.argmax(1) == labels).float().mean().item() if len(labels) else float("nan")
    return Evaluation(loss=loss, accuracy=accuracy, probs=probs)
