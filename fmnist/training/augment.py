"""Training-time augmentation of normalised batches: flips, shifts, random erasing.

    x = augment_batch(normalize(pixels), generator, params.train.augment)   # flip, shift, erase

Used by the training loop only (params train.augment: flip, shift, erase); what the
evaluate stage scores and the exported model compute never pass through here. A new
augmentation is a key of train.augment in params.yaml, a field of fmnist.params.Augment
and its lines here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fmnist.model.classifier import MEAN, STD

if TYPE_CHECKING:
    from fmnist.params import Augment


def augment_batch(x: torch.Tensor, generator: torch.Generator, augment: Augment) -> torch.Tensor:
    """Augment a normalised batch (N, 1, 28, 28) as one tensor, on whatever device `x` is.

    - `flip`: mirror a random half of the images left to right (garments are
      left-right symmetric classes);
    - `shift`: move each image by up to `shift` pixels in each direction (the
      uncovered border is background);
    - `erase`: with this probability, blank a random rectangle of each image (random
      erasing: 2% to 25% of the image, aspect ratio 1:3 to 3:1) to the mean grey.

    Every draw comes from `generator` (a CPU generator), the same number of draws per
    batch whatever the settings' outcome, so a batch is augmented alike on every device.
    """
    flip, shift, erase = augment.flip, augment.shift, augment.erase
    if not (flip or shift or erase):
        return x  # no draws either: a run without augmentation draws nothing
    n, device = x.shape[0], x.device
    if flip:
        flipped = (torch.rand(n, generator=generator) < 0.5).to(device)
        x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(3), x)
    if shift:
        d = torch.randint(-shift, shift + 1, (2, n, 1), generator=generator).to(device)
        side = x.shape[-1]
        ramp = torch.arange(side, device=device)
        rows, cols = (ramp + d[0]).clamp_(-1, side), (ramp + d[1]).clamp_(-1, side)
        # Pad one background pixel on every side; out-of-range indices land on it.
        padded = F.pad(x, (1, 1, 1, 1), value=(0 - MEAN) / STD)
        x = padded[torch.arange(n, device=device).view(-1, 1, 1), 0, (rows + 1)[:, :, None], (cols + 1)[:, None, :]]
        x = x.unsqueeze(1)
    if erase:
        side = x.shape[-1]
        u = torch.rand(5, n, generator=generator)
        area = (0.02 + 0.23 * u[0]) * side * side
        ratio = torch.exp(math.log(1 / 3) + 2 * math.log(3) * u[1])
        h = (area * ratio).sqrt().round().clamp(1, side)
        w = (area / ratio).sqrt().round().clamp(1, side)
        top, left = (u[2] * (side - h + 1)).floor(), (u[3] * (side - w + 1)).floor()
        on = u[4] < erase
        box = torch.stack([top, top + h, left, left + w]).to(device)
        ramp = torch.arange(side, device=device)
        inside_rows = (ramp >= box[0, :, None]) & (ramp < box[1, :, None])
        inside_cols = (ramp >= box[2, :, None]) & (ramp < box[3, :, None])
        mask = inside_rows[:, :, None] & inside_cols[:, None, :] & on.to(device).view(-1, 1, 1)
        x = x.masked_fill(mask.unsqueeze(1), 0.0)
    return x
