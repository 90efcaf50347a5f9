"""The evaluate stage's mistakes grid: the most confident mistakes first, each with its confidence."""

from __future__ import annotations

import numpy as np

from fmnist.core.dataset import CLASSES
from fmnist.metrics import misclassified_grid


def titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_the_grid_shows_the_most_confident_mistakes_first_with_their_confidence():
    labels = np.array([6, 6, 0, 3, 1])
    preds = np.array([0, 6, 6, 3, 3])  # images 0, 2 and 4 are wrong
    probs = np.full((5, 10), 0.01)
    probs[[0, 2, 4], preds[[0, 2, 4]]] = [0.62, 0.97, 0.5]
    fig = misclassified_grid(np.zeros((5, 28, 28), np.uint8), labels, preds, 2, probs)
    assert titles(fig) == [f"{CLASSES[0]}\n-> {CLASSES[6]} 0.97", f"{CLASSES[6]}\n-> {CLASSES[0]} 0.62"]
    assert "probability" in fig.get_suptitle()


def test_without_probabilities_the_grid_names_the_mistakes_in_order():
    labels, preds = np.array([6, 1]), np.array([0, 3])
    fig = misclassified_grid(np.zeros((2, 28, 28), np.uint8), labels, preds, 5)
    assert titles(fig) == [f"{CLASSES[6]}\n-> {CLASSES[0]}", f"{CLASSES[1]}\n-> {CLASSES[3]}"]
