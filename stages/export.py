"""Stage `export`: write the trained model as ONNX, to serve it without PyTorch.

    python stages/export.py models/model.pt models/model.onnx

The graph holds everything from stored pixels to probabilities: input `pixels`, uint8
(N, 1, 28, 28) as data/prepared stores them (0-255, light garment on a dark ground);
output `probabilities`, float32 (N, 10); N is free. It computes what the evaluate stage
scores: the data set's normalisation, the net, softmax and, with the params' evaluate.tta,
the average with the mirror image's prediction; in fp32, as the evaluate stage scores.
Class names and provenance are in the model's
metadata (onnxruntime: session.get_modelmeta().custom_metadata_map).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fmnist.core.errors import run
from fmnist.core.io import md5_hex, write_bytes
from fmnist.model.classifier import Classifier
from fmnist.model.model_file import card, model_from_bytes, read_model_bytes
from fmnist.onnx_file import INPUT, INPUT_DOC, OUTPUT, OUTPUT_DOC, onnx_bytes
from fmnist.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the trained model (models/model.pt)")
    parser.add_argument("out", type=Path, help="the ONNX file to write (models/model.onnx)")
    args = parser.parse_args()
    tta = load_params().evaluate.tta

    source = read_model_bytes(args.model, "run the train stage first (dvc repro)")
    net, record = model_from_bytes(source, str(args.model))
    about = card(record)
    # Only what the model file holds: the same model gives the same ONNX bytes at any commit.
    metadata = {
        "classes": json.dumps(about["classes"]),
        "input": f"{INPUT}: {INPUT_DOC}",
        "output": f"{OUTPUT}: {OUTPUT_DOC}",
        "mirror_averaged": json.dumps(tta),
        "architecture": about["architecture"],
        "best_epoch": json.dumps(about["best_epoch"]),
        "val_acc": json.dumps(about["val_acc"]),
        "data_sha256": str(about["data_sha256"]),
        "source_md5": md5_hex(source),
    }
    # One call of torch.onnx.export, with no progress to show: say what it is, so it doesn't look hung.
    print(f"exporting {args.model} to ONNX (torch.export, then the ONNX graph; seconds to a minute)...", flush=True)
    start = time.perf_counter()
    data = onnx_bytes(Classifier(net, mirror=tta), metadata)
    write_bytes(args.out, data)
    print(f"wrote {args.out} ({len(data)} bytes, {'mirror-averaged, ' if tta else ''}"
          f"exported in {time.perf_counter() - start:.1f} s) from {args.model}")


if __name__ == "__main__":
    run(main)
