"""Pixels to probabilities: the data set's normalisation, the net, softmax, mirror-averaging.

    classifier = Classifier(net, mirror=True)      # uint8 (N, 1, 28, 28) -> probabilities (N, 10)
    probs = probabilities(classifier, images, device=device, batch_size=1000)   # a whole set, in batches
    result = score(classifier, images, labels, device=device, batch_size=1000)  # loss, accuracy, probs
    top_k(probs[0], CLASSES, 3)                    # [("Trouser", 0.97), ("Dress", 0.02), ...]

Written once, used by every consumer of a trained net: the train stage scores the
validation set with it (no mirror), the evaluate stage the test set, the export stage
turns it into the ONNX graph (so that graph takes raw pixels and needs no preprocessing
code) and `fmnist-predict` names garments with it. The training loop normalises its
batches with `normalize`, the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fmnist.core.dataset import CLASSES
from fmnist.model.device import autocast, to_device

# Published Fashion-MNIST training-set statistics for pixels scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., 28, 28) -> float, standardised with the published statistics."""
    return ((pixels.float() / 255.0) - MEAN) / STD


class Classifier(nn.Module):
    """uint8 pixels (N, 1, 28, 28) -> float32 class probabilities (N, classes).

    With `mirror` (params' evaluate.tta), each image's probabilities are averaged with
    those of its mirror image: garments are left-right symmetric classes.
    """

    def __init__(self, net: nn.Module, mirror: bool):
        super().__init__()
        self.net, self.mirror = net.eval(), mirror

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = normalize(pixels)
        probs = self.net(x).float().softmax(1)
        if self.mirror:
            probs = (probs + self.net(x.flip(3)).float().softmax(1)) / 2
        return probs


def probabilities(classifier: Classifier, images: torch.Tensor, *, device: torch.device, batch_size: int,
                  dtype: torch.dtype | None = None, bar: str | None = None) -> torch.Tensor:
    """Class probabilities (N, classes) of uint8 images (N, 28, 28), `batch_size` at a time, on the CPU.

    With `bar`, a progress bar so labelled counts the images on a terminal (never in logs).
    """
    classifier.eval()
    probs = []
    progress = tqdm(total=len(images), desc=bar, unit="image", leave=False, disable=None if bar else True)
    for start in range(0, len(images), batch_size):
        pixels = to_device(images[start:start + batch_size], device).unsqueeze(1)
        # no_grad here, not as a decorator: mutmut (make mutate) leaves decorated functions alone.
        with torch.no_grad(), autocast(device, dtype):
            probs.append(classifier(pixels).cpu())
        progress.update(len(pixels))
    progress.close()
    return torch.cat(probs) if probs else torch.zeros(0, len(CLASSES))


@dataclass
class Evaluation:
    loss: float       # mean cross-entropy of the probabilities
    accuracy: float   # a fraction
    probs: torch.Tensor  # (N, classes) probabilities, on the CPU


def score(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device,
          batch_size: int, dtype: torch.dtype | None = None, bar: str | None = None) -> Evaluation:
    """Mean cross-entropy, accuracy and class probabilities of `classifier` on a whole set.

    `bar`: as for `probabilities`.
    """
    probs = probabilities(classifier, images, device=device, batch_size=batch_size, dtype=dtype, bar=bar)
    labels = labels.cpu()
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item() if len(labels) else float("nan")
    accuracy = (probs.argmax(1) == labels).float().mean().item() if len(labels) else float("nan")
    return Evaluation(loss=loss, accuracy=accuracy, probs=probs)


def top_k(probs: torch.Tensor, classes: list[str], k: int) -> list[tuple[str, float]]:
    """The k likeliest classes of one image's probabilities, likeliest first."""
    values, indices = probs.topk(min(k, len(classes)))
    return [(classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
