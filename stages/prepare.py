"""Stage `prepare`: check the raw IDX files, split off a validation set, save compact tensors.

    python stages/prepare.py data/raw data/prepared

Reads params `data.val_size` and `data.seed`. Writes OUT/{train,val,test}.pt (each a
dict of uint8 `images` (N, 28, 28) and int64 `labels` (N,)) and OUT/class_counts.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fmnist.core.dataset import CLASSES
from fmnist.core.errors import DataError, ParamError, run
from fmnist.core.io import torch_bytes, write_folder
from fmnist.params import load_params, val_size_problem
from fmnist.raw import RAW_FILES, read_raw_split
from fmnist.splits import class_counts, split_file, split_train_val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="folder holding the four uncompressed IDX files")
    parser.add_argument("out", type=Path, help="folder to write the prepared tensors to")
    args = parser.parse_args()
    params = load_params().data

    train_images, train_labels = read_raw_split(args.raw, "train")
    test_images, test_labels = read_raw_split(args.raw, "test")
    # params.yaml's check assumed the official 60,000 training images: the data may hold fewer.
    problem = val_size_problem(len(train_labels), params.val_size, str(args.raw / RAW_FILES["train", "images"]))
    if problem:
        raise ParamError(problem)
    if len(test_labels) == 0:
        raise DataError(f"{args.raw / RAW_FILES['test', 'images']}: holds no images; the test set can't be empty")
    train_idx, val_idx = split_train_val(len(train_labels), params.val_size, params.seed)
    splits = {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "val": (train_images[val_idx], train_labels[val_idx]),
        "test": (test_images, test_labels),
    }
    files = {f"{name}.pt": torch_bytes(split_file(images, labels)) for name, (images, labels) in splits.items()}
    counts = {name: class_counts(labels) for name, (_, labels) in splits.items()}
    files["class_counts.json"] = (json.dumps({"classes": list(CLASSES), "counts": counts}, indent=2) + "\n").encode()
    write_folder(args.out, files)
    sizes = ", ".join(f"{name} {len(labels)}" for name, (_, labels) in splits.items())
    print(f"wrote {sizes} images to {args.out}")


if __name__ == "__main__":
    run(main)
