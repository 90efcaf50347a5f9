"""Training-time augmentation of normalised batches: flips, shifts, random erasing.

    augmentation = Augmentation(params.train.augment, len(order), generator, device)  # an epoch's draws, moved once
    x = augmentation(normalize(pixels), rows)    # the batch that is rows (a slice) of the epoch's order

Used by the training loop only (params train.augment: flip, shift, erase); what the
evaluate stage scores and the exported model compute never pass through here. A new
augmentation is a key of train.augment in params.yaml, a field of fmnist.params.Augment
and its lines here: its draws in `_draw`, what it does with them in `__call__`.

Every random number of an epoch is drawn up front, on the CPU, from the epoch's
generator, and copied to the device in one go (pinned, without blocking, on CUDA); a
batch then takes its rows of them on the device. So a step asks nothing of the host,
and a GPU can run ahead of it; and the draws, hence the augmented images, are the same
on every device.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fmnist.core.dataset import SIZE
from fmnist.model.classifier import MEAN, STD
from fmnist.model.device import to_device

if TYPE_CHECKING:
    from fmnist.params import Augment


class Augmentation:
    """One epoch's augmentation of `n` images, drawn from `generator` (a CPU generator), held on `device`.

    - `flip`: mirror a random half of the images left to right (garments are
      left-right symmetric classes);
    - `shift`: move each image by up to `shift` pixels in each direction (the
      uncovered border is background);
    - `erase`: with this probability, blank a random rectangle of each image (random
      erasing: 2% to 25% of the image, aspect ratio 1:3 to 3:1) to the mean grey.

    The draws don't depend on the batch size or the device; with every augmentation
    off nothing is drawn.
    """

    def __init__(self, augment: Augment, n: int, generator: torch.Generator, device: torch.device):
        self.draws = {name: to_device(draw, device) for name, draw in _draw(augment, n, generator).items()}

    def __call__(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        """Augment the normalised batch `x` (N, 1, 28, 28), images `rows` of the epoch, on `x`'s device."""
        draws = {name: draw[rows] for name, draw in self.draws.items()}
        n, device = x.shape[0], x.device
        ramp = torch.arange(SIZE, device=device)
        if "flip" in draws:
            x = torch.where(draws["flip"].view(-1, 1, 1, 1), x.flip(3), x)
        if "shift" in draws:
            d = draws["shift"]  # (N, 2): rows down, columns right
            rows_from = (ramp - d[:, :1]).clamp_(-1, SIZE)
            cols_from = (ramp - d[:, 1:]).clamp_(-1, SIZE)
            # Pad one background pixel on every side; out-of-range indices land on it.
            padded = F.pad(x, (1, 1, 1, 1), value=(0 - MEAN) / STD)
            x = padded[torch.arange(n, device=device).view(-1, 1, 1), 0,
                       (rows_from + 1)[:, :, None], (cols_from + 1)[:, None, :]].unsqueeze(1)
        if "erase" in draws:
            top, bottom, left, right = draws["erase"].unbind(1)  # an empty box where the image is spared
            inside_rows = (ramp >= top[:, None]) & (ramp < bottom[:, None])
            inside_cols = (ramp >= left[:, None]) & (ramp < right[:, None])
            x = x.masked_fill((inside_rows[:, :, None] & inside_cols[:, None, :]).unsqueeze(1), 0.0)
        return x


def _draw(augment: Augment, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random number `augment` needs for `n` images, one row per image, on the CPU."""
    draws = {}
    if augment.flip:
        draws["flip"] = torch.rand(n, generator=generator) < 0.5
    if augment.shift:
        draws["shift"] = torch.randint(-augment.shift, augment.shift + 1, (n, 2), generator=generator)
    if augment.erase:
        # float64: rounding to whole pixels never hangs on the last bit of exp
        u = torch.rand(5, n, generator=generator, dtype=torch.float64)
        area = (0.02 + 0.23 * u[0]) * SIZE ** 2
        ratio = torch.exp(math.log(1 / 3) + 2 * math.log(3) * u[1])
        h = (area * ratio).sqrt().round().clamp(1, SIZE)
        w = (area / ratio).sqrt().round().clamp(1, SIZE)
        h = torch.where(u[4] < augment.erase, h, 0)  # spared: an empty box
        top, left = (u[2] * (SIZE - h + 1)).floor(), (u[3] * (SIZE - w + 1)).floor()
        draws["erase"] = torch.stack([top, top + h, left, left + w], 1).long()
    return draws
