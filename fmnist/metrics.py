"""Test-set metrics (scikit-learn) and the pictures of the evaluate stage (matplotlib).

    summary = summarize(labels, probs, loss)       # dict for metrics/eval.json
    table = per_class_table(labels, preds)         # pandas DataFrame, one row a class
    fig = misclassified_grid(images, labels, preds, n=25, probs=probs)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Figures are built with matplotlib's object API, not pyplot: no backend to choose, no
# screen needed, nothing global changed for a notebook that imports this module.
from matplotlib.figure import Figure
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from fmnist.core.dataset import CLASSES


def summarize(labels: np.ndarray, probs: np.ndarray, loss: float) -> dict:
    """The headline test figures of metrics/eval.json: accuracy (a fraction) and loss.

    Two columns of `dvc exp show`, so that the table of experiments reads in 120 columns.
    Macro F1 is not among them: on Fashion-MNIST's balanced test set (1,000 images a class)
    it follows accuracy to the third digit; per-class F1 is in metrics/per_class.csv.
    """
    preds = probs.argmax(1)
    return {"test_acc": float(accuracy_score(labels, preds)), "test_loss": float(loss)}


def per_class_table(labels: np.ndarray, preds: np.ndarray) -> pd.DataFrame:
    """Precision, recall, F1 and support of each class (metrics/per_class.csv), in label order."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=list(range(len(CLASSES))), zero_division=0)
    table = pd.DataFrame({"class": CLASSES, "precision": precision, "recall": recall, "f1": f1,
                          "support": support.astype(int)})
    return table.round({"precision": 4, "recall": 4, "f1": 4})


def confusion_rows(labels: np.ndarray, preds: np.ndarray) -> pd.DataFrame:
    """One row per test image, the shape DVC's `confusion` plot template reads."""
    names = np.array(CLASSES)
    return pd.DataFrame({"actual": names[labels], "predicted": names[preds]})


def misclassified_grid(images: np.ndarray, labels: np.ndarray, preds: np.ndarray, n: int,
                       probs: np.ndarray | None = None) -> Figure:
    """A grid of up to `n` misclassified images, each titled 'true -> predicted'.

    With `probs` (N, classes), the most confident mistakes come first, so the grid shows
    the errors most worth a look, and the same ones on every run; each title then ends
    with the probability the model gave its wrong answer ("Shirt -> T-shirt/top 0.97").
    """
    wrong = np.flatnonzero(labels != preds)
    if probs is not None:
        wrong = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")]
    wrong = wrong[:n]
    cols = max(1, min(5, len(wrong)))
    rows = max(1, -(-len(wrong) // cols))
    # At least 5 inches wide, for the title; constrained layout keeps it clear of the images' titles.
    fig = Figure(figsize=(max(2.2 * cols, 5.0), 2.5 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):  # the grid may have spare cells
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        confidence = f" {probs[i, preds[i]]:.2f}" if probs is not None else ""
        ax.set_title(f"{CLASSES[labels[i]]}\n-> {CLASSES[preds[i]]}{confidence}", fontsize=8)
    if len(wrong) == 0:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle("Most confident mistakes (test set)\ntrue -> predicted, and the probability given to it"
                 if probs is not None else "Misclassified test images\ntrue -> predicted", fontsize=10)
    return fig
