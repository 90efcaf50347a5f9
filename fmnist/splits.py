"""The prepared data: train, validation and test splits as whole tensors, and their checks.

    train_idx, val_idx = split_train_val(60_000, val_size=5000, seed=0)
    images, labels = load_split(Path("data/prepared/test.pt"))   # uint8 (N, 28, 28), int64 (N,)

The prepare stage writes each split as a torch file holding a dict of `images` and
`labels`; the train and evaluate stages read them back with `load_split`, which checks
everything the stages rely on and names the file in a DataError otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fmnist.core.dataset import CLASSES, MAX_COUNT, SIZE
from fmnist.core.errors import DataError
from fmnist.core.io import load_torch

PREPARED_HINT = "re-create it with `dvc repro --force prepare`"
# A split holds at most the whole data set: MAX_COUNT uint8 images of SIZE x SIZE and
# their int64 labels (55,440,000 bytes), plus 1 MiB for the zip records and the dict
# (a few KB measured). A prepared file is not read, nor its records inflated, past this.
MAX_SPLIT_BYTES = MAX_COUNT * (SIZE * SIZE + 8) + (1 << 20)


def split_train_val(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle range(n) with `seed` and return (train indices, validation indices)."""
    if not 0 <= val_size < n:
        raise DataError(f"cannot hold out {val_size} validation images from {n} training images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def class_counts(labels: torch.Tensor) -> dict[str, int]:
    counts = torch.bincount(labels, minlength=len(CLASSES)).tolist()
    return {name: int(c) for name, c in zip(CLASSES, counts, strict=True)}


def split_file(images: torch.Tensor, labels: torch.Tensor) -> dict:
    """What a prepared split's torch file holds (copies, so no larger tensor is saved with them)."""
    return {"images": images.clone(), "labels": labels.clone()}


def check_split(obj: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a prepared split, or DataError saying what is wrong with it."""
    if not isinstance(obj, dict) or not {"images", "labels"} <= set(obj):
        found = f"keys {sorted(map(str, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DataError(f"{name}: expected a dict with 'images' and 'labels', found {found}; {PREPARED_HINT}")
    images, labels = obj["images"], obj["labels"]
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 3
            and tuple(images.shape[1:]) == (SIZE, SIZE)):
        what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"{name}: 'images' should be uint8 (N, {SIZE}, {SIZE}), found {what}; {PREPARED_HINT}")
    if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.ndim == 1):
        what = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise DataError(f"{name}: 'labels' should be int64 (N,), found {what}; {PREPARED_HINT}")
    if len(images) != len(labels):
        raise DataError(f"{name}: {len(images)} images but {len(labels)} labels; {PREPARED_HINT}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{name}: labels outside 0-{len(CLASSES) - 1}; {PREPARED_HINT}")
    return images, labels


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A prepared split (data/prepared/<name>.pt), checked."""
    hint = "run the prepare stage first (dvc repro)" if not path.exists() else PREPARED_HINT
    return check_split(load_torch(path, hint, MAX_SPLIT_BYTES, "a prepared split of Fashion-MNIST"), str(path))


def load_nonempty_split(path: Path, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """load_split, refusing a split with no images: `role` ("validation", "test") says what they were for."""
    images, labels = load_split(path)
    if len(labels) == 0:
        raise DataError(f"{path}: holds no {role} images; {PREPARED_HINT}")
    return images, labels
