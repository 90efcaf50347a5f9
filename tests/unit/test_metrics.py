"""fmnist/metrics.py: the test-set figures (accuracy, loss, macro F1), the per-class table, the
confusion rows, and the mistakes grid: the most confident mistakes first, each with its confidence."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from fmnist.core.dataset import CLASSES
from fmnist.metrics import confusion_rows, misclassified_grid, per_class_table, summarize


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


# --- the figures of metrics/eval.json and per_class.csv, on a few labels ---------------

LABELS = np.array([0, 0, 1, 1, 2])
PREDS = np.array([0, 1, 1, 1, 1])  # class 0: 1 of 2 right; class 1: 2 of 2 (and 2 false alarms); class 2: 0 of 1


def one_hot(preds: np.ndarray) -> np.ndarray:
    probs = np.full((len(preds), 10), 0.01)
    probs[np.arange(len(preds)), preds] = 0.91
    return probs


@pytest.mark.filterwarnings("error")
def test_summarize_gives_accuracy_and_the_loss_given_as_plain_floats():
    summary = summarize(LABELS, one_hot(PREDS), np.float32(0.25))
    assert list(summary) == ["test_acc", "test_loss"]
    assert all(type(v) is float for v in summary.values())
    assert summary["test_acc"] == 3 / 5 and summary["test_loss"] == 0.25


def test_summarize_of_an_all_wrong_set_is_zero_not_an_error():
    summary = summarize(np.array([3, 4]), one_hot(np.array([4, 3])), 2.0)
    assert summary["test_acc"] == 0.0


@pytest.mark.filterwarnings("error")  # classes never predicted or absent score 0 without a warning
def test_the_per_class_table_has_a_row_a_class_in_label_order():
    table = per_class_table(LABELS, PREDS)
    assert list(table.columns) == ["class", "precision", "recall", "f1", "support"]
    assert table["class"].tolist() == list(CLASSES)
    assert table["support"].tolist() == [2, 2, 1] + [0] * 7 and table["support"].dtype.kind == "i"
    assert table["precision"].tolist()[:3] == [1.0, 0.5, 0.0]
    assert table["recall"].tolist()[:3] == [0.5, 1.0, 0.0]
    assert table["f1"].tolist()[:3] == [0.6667, 0.6667, 0.0]  # 2/3 rounded to 4 places
    assert (table[["precision", "recall", "f1"]].iloc[3:] == 0).all().all()  # no division by zero: 0


def test_precision_recall_and_f1_are_rounded_to_four_places():
    labels, preds = np.array([0, 0, 0, 1, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 1, 0, 0, 2])
    first = per_class_table(labels, preds).iloc[0]  # class 0: 1 right of 3 predicted, of 3 there
    assert (first["precision"], first["recall"], first["f1"]) == (0.3333, 0.3333, 0.3333)


def test_confusion_rows_name_the_actual_and_predicted_class_of_each_image():
    rows = confusion_rows(np.array([9, 0]), np.array([7, 0]))
    assert list(rows.columns) == ["actual", "predicted"]
    assert rows.values.tolist() == [["Ankle boot", "Sneaker"], ["T-shirt/top", "T-shirt/top"]]


# --- the grid's layout ------------------------------------------------------------------

def shown(fig) -> list[np.ndarray]:
    return [ax.images[0].get_array() for ax in fig.axes if ax.images]


def test_the_grid_is_five_wide_with_as_many_rows_as_needed_and_sized_to_fit():
    labels, preds = np.zeros(12, int), np.ones(12, int)
    images = np.arange(12, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    fig = misclassified_grid(images, labels, preds, 7)
    assert len(fig.axes) == 10  # 7 mistakes: 2 rows of 5
    assert tuple(fig.get_size_inches()) == pytest.approx((11.0, 5.4))
    assert [int(a[0, 0]) for a in shown(fig)] == [0, 1, 2, 3, 4, 5, 6]  # the first n, in order
    assert all(not ax.axison for ax in fig.axes)
    image = fig.axes[3].images[0]  # all 3s: black and white are still 0 and 255
    assert image.get_cmap().name == "gray_r" and image.get_clim() == (0, 255)
    assert fig.axes[0].title.get_fontsize() == 8 and fig._suptitle.get_fontsize() == 10
    assert fig.get_suptitle() == "Misclassified test images\ntrue -> predicted"
    assert type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"


def test_one_mistake_is_a_grid_of_one_at_least_five_inches_wide():
    fig = misclassified_grid(np.zeros((2, 28, 28), np.uint8), np.array([1, 2]), np.array([1, 3]), 25)
    assert len(fig.axes) == 1 and tuple(fig.get_size_inches()) == pytest.approx((5.0, 2.9))
    assert titles(fig) == [f"{CLASSES[2]}\n-> {CLASSES[3]}"]


def test_no_mistakes_is_one_empty_frame_that_says_so():
    fig = misclassified_grid(np.zeros((2, 28, 28), np.uint8), np.array([1, 2]), np.array([1, 2]), 25, np.eye(2, 10))
    [ax] = fig.axes
    [text] = ax.texts
    assert text.get_text() == "no misclassified images" and text.get_position() == (0.5, 0.5)
    assert text.get_ha() == "center" and text.get_va() == "center" and not ax.images
    assert fig.get_suptitle() == ("Most confident mistakes (test set)\n"
                                  "true -> predicted, and the probability given to it")


def test_the_sizes_of_the_titles_are_the_grids_own_not_matplotlibs_defaults():
    with matplotlib.rc_context({"font.size": 7, "figure.titlesize": 7}):
        fig = misclassified_grid(np.zeros((1, 28, 28), np.uint8), np.array([1]), np.array([2]), 5)
    assert fig.axes[0].title.get_fontsize() == 8 and fig._suptitle.get_fontsize() == 10


def test_equally_confident_mistakes_keep_their_order():
    labels, preds = np.zeros(4, int), np.array([1, 2, 3, 0])
    probs = np.full((4, 10), 0.5)
    images = np.arange(4, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    fig = misclassified_grid(images, labels, preds, 3, probs)
    assert [int(a[0, 0]) for a in shown(fig)] == [0, 1, 2]
    assert titles(fig)[0] == f"{CLASSES[0]}\n-> {CLASSES[1]} 0.50"


def test_equally_confident_mistakes_keep_their_order_among_many():
    """A stable sort: with 100 mistakes, quicksort (numpy's default) shuffles the ties."""
    confidence = np.full(100, 0.5)
    confidence[::7] = 0.9  # 15 very confident mistakes: 0, 7, 14, ...
    preds = np.ones(100, int)
    probs = np.zeros((100, 10))
    probs[:, 1] = confidence
    images = np.arange(100, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    fig = misclassified_grid(images, np.zeros(100, int), preds, 8, probs)
    assert [int(a[0, 0]) for a in shown(fig)] == [0, 7, 14, 21, 28, 35, 42, 49]
