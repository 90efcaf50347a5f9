"""Stage `prepare`: check the raw IDX files, split off a validation set, save compact tensors.

    python stages/prepare.py data/raw data/prepared

Reads params `data.val_size` and `data.seed`. Writes OUT/{train,val,test}.pt (each a
dict of uint8 `images` (N, 28, 28) and int64 `labels` (N,)) and OUT/class_counts.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import atomic_path, load_params, run
from fmnist.data import CLASSES, RAW_FILES, check_pair, class_counts, parse_idx, split_train_val
from fmnist.errors import DataError


def read_split(raw_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    arrays = []
    for kind in ("images", "labels"):
        path = raw_dir / RAW_FILES[split, kind]
        if not path.is_file():
            raise DataError(f"{path}: missing; run the download stage first (dvc repro)")
        arrays.append(parse_idx(path.read_bytes(), str(path), kind))
    check_pair(*arrays, str(raw_dir / RAW_FILES[split, "images"]), str(raw_dir / RAW_FILES[split, "labels"]))
    images, labels = arrays
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype("int64"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, help="folder holding the four uncompressed IDX files")
    parser.add_argument("out", type=Path, help="folder to write the prepared tensors to")
    args = parser.parse_args()
    params = load_params()["data"]

    train_images, train_labels = read_split(args.raw, "train")
    test_images, test_labels = read_split(args.raw, "test")
    train_idx, val_idx = split_train_val(len(train_labels), params["val_size"], params["seed"])
    splits = {
        "train": (train_images[train_idx], train_labels[train_idx]),
        "val": (train_images[val_idx], train_labels[val_idx]),
        "test": (test_images, test_labels),
    }

    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for name, (images, labels) in splits.items():
            torch.save({"images": images.clone(), "labels": labels.clone()}, tmp / f"{name}.pt")
        counts = {name: class_counts(labels) for name, (_, labels) in splits.items()}
        (tmp / "class_counts.json").write_text(json.dumps({"classes": list(CLASSES), "counts": counts}, indent=2) + "\n")
    sizes = ", ".join(f"{name} {len(labels)}" for name, (_, labels) in splits.items())
    print(f"wrote {sizes} images to {args.out}")


if __name__ == "__main__":
    run(main)
