"""fmnist/model/classifier.py: pixels to probabilities (normalisation, softmax, mirror-averaging) and scoring a set."""

from __future__ import annotations

import pytest
import torch

from fmnist.model.classifier import Classifier, normalize, score
from fmnist.model.nets import build_model
from helpers.data import synthetic

CPU = torch.device("cpu")


def test_normalize_maps_pixels_with_the_data_sets_mean_and_std():
    x = normalize(torch.full((2, 1, 28, 28), 255, dtype=torch.uint8))
    assert x.shape == (2, 1, 28, 28) and torch.allclose(x, torch.tensor((1 - 0.2860) / 0.3530))


@pytest.mark.parametrize("mirror", [True, False])
def test_scoring_in_batches_gives_what_the_classifier_gives_at_once(model_file, mirror):
    net = build_model("cnn")
    net.load_state_dict(torch.load(model_file, weights_only=True)["state_dict"])
    images, labels = (torch.from_numpy(a) for a in synthetic(100, 3))
    scored = score(Classifier(net, mirror=mirror), images, labels.long(), device=CPU, batch_size=32)
    with torch.no_grad():
        probs = Classifier(net, mirror=mirror)(images.unsqueeze(1))
    assert torch.allclose(probs, scored.probs, atol=1e-6)
