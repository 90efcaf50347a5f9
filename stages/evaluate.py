"""Stage `evaluate`: score the trained model on the test set; write metrics, a table and plots.

    python stages/evaluate.py data/prepared models/model.pt metrics/eval.json \\
        metrics/per_class.csv metrics/confusion.csv metrics/misclassified.png

Reads the params' `evaluate` section. Writes test accuracy (a fraction), loss, macro F1
and per-class precision/recall/F1 to METRICS; the per-class table to TABLE; one
(actual, predicted) row per test image to CONFUSION for DVC's confusion-matrix plot;
and a grid of the most confident mistakes to GRID.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import load_params, run, write_json, write_with
from fmnist.errors import DataError
from fmnist.metrics import confusion_rows, misclassified_grid, per_class_table, summarize
from fmnist.model import build_model
from fmnist.training import evaluate, pick_device, pick_dtype, prepare_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("prepared", "model", "metrics", "table", "confusion", "grid"):
        parser.add_argument(name, type=Path)
    args = parser.parse_args()
    params = load_params()
    p = params["evaluate"]

    for path in (args.model, args.prepared / "test.pt"):
        if not path.is_file():
            raise DataError(f"{path}: missing; run the earlier stages first (dvc repro)")
    device = pick_device(params["train"]["device"])
    checkpoint = torch.load(args.model, weights_only=True)
    net = build_model(checkpoint["model"], len(checkpoint["classes"]))
    net.load_state_dict(checkpoint["state_dict"])
    model = prepare_model(net, device)
    test = torch.load(args.prepared / "test.pt", weights_only=True)

    dtype = pick_dtype(params["train"]["precision"], device)
    result = evaluate(model, test["images"], test["labels"], device=device, batch_size=p["batch_size"],
                      tta=p["tta"], dtype=dtype)
    labels, probs = test["labels"].numpy(), result.probs.numpy()
    preds = probs.argmax(1)
    summary = summarize(labels, probs, result.loss)

    write_json(args.metrics, summary)
    write_with(args.table, lambda tmp: per_class_table(summary).to_csv(tmp, index=False))
    write_with(args.confusion, lambda tmp: confusion_rows(labels, preds).to_csv(tmp, index=False))
    fig = misclassified_grid(test["images"].numpy(), labels, preds, p["misclassified"], probs)
    write_with(args.grid, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    print(f"test accuracy {summary['accuracy']:.4f}, loss {summary['loss']:.4f}, "
          f"macro F1 {summary['f1_macro']:.4f} (model from epoch {checkpoint['epoch']})")


if __name__ == "__main__":
    run(main)
