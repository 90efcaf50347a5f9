"""Tiny Fashion-MNIST-shaped data: IDX bytes, synthetic images, raw folders, train params."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import yaml

from fmnist.params import Train
from helpers import ROOT

RAW_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Small settings that still exercise every code path of the pipeline.
TINY_PARAMS = {
    "data": {"val_size": 60},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu"},
    "evaluate": {"batch_size": 64, "misclassified": 6},
}


def train_params(**overrides) -> Train:
    """params.yaml's train section for a quick CPU run (fp32, lr 0.05), with `overrides`, checked."""
    train = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    return Train.model_validate({**train, "device": "cpu", "precision": "fp32", "lr": 0.05, **overrides})


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Encode a uint8 array as an IDX file."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images a small net can learn in a few steps: class k lights up band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def tiny(n: int = 256, seed: int = 0):
    """synthetic(n, seed) as tensors: uint8 images (n, 28, 28) and int64 labels."""
    images, labels = synthetic(n, seed)
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def blank(n: int) -> torch.Tensor:
    """n black uint8 images (n, 28, 28): training images where only their number matters."""
    return torch.zeros(n, 28, 28, dtype=torch.uint8)


def write_raw(folder: Path, n_train: int = 400, n_test: int = 120, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic(n, seed)
        for name, data in zip(RAW_NAMES[split], (idx_bytes(images, 2051), idx_bytes(labels, 2049)), strict=True):
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
    return folder
