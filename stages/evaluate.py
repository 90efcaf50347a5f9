"""Stage `evaluate`: score the trained model on the test set; write metrics, a table and plots.

    python stages/evaluate.py data/prepared models/model.pt metrics/eval.json \\
        metrics/per_class.csv metrics/confusion.csv metrics/misclassified.png

Reads the params' `evaluate` section. Scores on the CPU in fp32, whatever device and
precision trained the model, so the same model file gives the same figures on any
machine (docs/reproducibility.md). Writes the headline test figures (accuracy, a
fraction; loss) to METRICS; per-class precision, recall, F1 and support to
TABLE; one (actual, predicted) row per test image to CONFUSION for DVC's
confusion-matrix plot; and a grid of the most confident mistakes to GRID.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fmnist.core.errors import run
from fmnist.core.io import figure_bytes, save_csv, write_bytes, write_json
from fmnist.metrics import confusion_rows, misclassified_grid, per_class_table, summarize
from fmnist.model.classifier import Classifier, score
from fmnist.model.device import SCORING_DEVICE, to_device_layout
from fmnist.model.model_file import load_model
from fmnist.params import load_params
from fmnist.splits import load_nonempty_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("prepared", "model", "metrics", "table", "confusion", "grid"):
        parser.add_argument(name, type=Path)
    args = parser.parse_args()
    p = load_params().evaluate

    images, labels = load_nonempty_split(args.prepared / "test.pt", "test")
    net, record = load_model(args.model)
    classifier = Classifier(to_device_layout(net, SCORING_DEVICE), mirror=p.tta)
    result = score(classifier, images, labels, device=SCORING_DEVICE, batch_size=p.batch_size,
                   bar="scoring the test set")
    labels, probs = labels.numpy(), result.probs.numpy()
    preds = probs.argmax(1)
    summary = summarize(labels, probs, result.loss)
    table, confusion = per_class_table(labels, preds), confusion_rows(labels, preds)
    grid = figure_bytes(misclassified_grid(images.numpy(), labels, preds, p.misclassified, probs))

    # Everything is computed before the first write, so only a failing disk can leave a mix.
    write_json(args.metrics, summary)
    save_csv(args.table, table)
    save_csv(args.confusion, confusion)
    write_bytes(args.grid, grid)
    print(f"test accuracy {summary['test_acc']:.4f}, loss {summary['test_loss']:.4f} "
          f"(model from epoch {record.get('epoch', '?')})")


if __name__ == "__main__":
    run(main)
