"""fmnist/classifier.py: pixels to probabilities (normalisation, softmax, mirror-averaging) and scoring a set."""

from __future__ import annotations

import torch

from fmnist.classifier import normalize


def test_normalize_maps_pixels_with_the_data_sets_mean_and_std():
    x = normalize(torch.full((2, 1, 28, 28), 255, dtype=torch.uint8))
    assert x.shape == (2, 1, 28, 28) and torch.allclose(x, torch.tensor((1 - 0.2860) / 0.3530))
