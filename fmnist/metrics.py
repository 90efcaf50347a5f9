"""Test-set metrics (scikit-learn) and the pictures of the evaluate stage (matplotlib).

    summary = summarize(labels, probs, loss)       # dict for metrics/eval.json
    table = per_class_table(summary)               # pandas DataFrame, one row a class
    fig = misclassified_grid(images, labels, preds, n=25)
"""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support  # noqa: E402

from fmnist.data import CLASSES  # noqa: E402

# Metric keys must survive `dvc metrics show` flattening: no slashes or spaces.
CLASS_KEYS = tuple(re.sub(r"[^a-z0-9]+", "_", name.lower()) for name in CLASSES)


def summarize(labels: np.ndarray, probs: np.ndarray, loss: float) -> dict:
    """Accuracy (a fraction), loss, macro F1 and per-class precision/recall/F1/support."""
    preds = probs.argmax(1)
    classes = list(range(len(CLASSES)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(labels, preds)),
        "loss": float(loss),
        "f1_macro": float(f1_score(labels, preds, labels=classes, average="macro", zero_division=0)),
        "per_class": {
            key: {"precision": float(precision[i]), "recall": float(recall[i]),
                  "f1": float(f1[i]), "support": int(support[i])}
            for i, key in enumerate(CLASS_KEYS)
        },
    }


def per_class_table(summary: dict) -> pd.DataFrame:
    rows = [{"class": name, **summary["per_class"][key]} for name, key in zip(CLASSES, CLASS_KEYS)]
    return pd.DataFrame(rows).round({"precision": 4, "recall": 4, "f1": 4})


def confusion_rows(labels: np.ndarray, preds: np.ndarray) -> pd.DataFrame:
    """One row per test image, the shape DVC's `confusion` plot template reads."""
    names = np.array(CLASSES)
    return pd.DataFrame({"actual": names[labels], "predicted": names[preds]})


def misclassified_grid(images: np.ndarray, labels: np.ndarray, preds: np.ndarray, n: int,
                       probs: np.ndarray | None = None) -> plt.Figure:
    """A grid of up to `n` misclassified images, each titled 'true -> predicted'.

    The most confident mistakes come first when `probs` is given, so the grid shows
    the errors most worth a look, and the same ones on every run.
    """
    wrong = np.flatnonzero(labels != preds)
    if probs is not None:
        wrong = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")]
    wrong = wrong[:n]
    cols = max(1, min(5, len(wrong)))
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"{CLASSES[labels[i]]}\n-> {CLASSES[preds[i]]}", fontsize=8)
    if len(wrong) == 0:
        axes[0, 0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle("Misclassified test images (true -> predicted)", fontsize=10)
    fig.tight_layout()
    return fig
