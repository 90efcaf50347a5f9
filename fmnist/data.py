"""Fashion-MNIST data: parse and check IDX bytes, split, normalise, augment.

Everything here works on bytes and tensors handed in by the caller; the stages in
`stages/` do the file I/O. Example:

    images = parse_idx(gzip_or_raw_bytes, "train-images-idx3-ubyte", kind="images")
"""

from __future__ import annotations

import gzip
import math
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from fmnist.errors import DataError

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# The four files of the standard release, keyed by split and kind.
RAW_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
EXPECTED_COUNTS = {"train": 60_000, "test": 10_000}
# Published Fashion-MNIST training-set statistics for pixels scaled to [0, 1].
MEAN, STD = 0.2860, 0.3530

_MAGIC = {"images": 2051, "labels": 2049}  # IDX: uint8 data, 3 dims / 1 dim
_GZIP_MAGIC = b"\x1f\x8b"


def decompress(raw: bytes, name: str) -> bytes:
    """Return `raw` uncompressed if it is gzipped, as is otherwise."""
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: not a readable gzip file ({exc})") from None


def parse_idx(raw: bytes, name: str, kind: str) -> np.ndarray:
    """Parse IDX bytes (gzipped or not) holding Fashion-MNIST `kind` ("images" or "labels").

    Returns a read-only uint8 array (N, 28, 28) for images or (N,) for labels; raises
    DataError naming `name` for anything else: bad gzip, short header, wrong magic
    number or dimensions, a payload shorter or longer than the header announces.
    """
    raw = decompress(raw, name)
    if len(raw) == 0:
        raise DataError(f"{name}: the file is empty")
    if len(raw) < 4:
        raise DataError(f"{name}: truncated: {len(raw)} bytes, shorter than the 4-byte IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[kind]:
        raise DataError(
            f"{name}: wrong magic number {magic} (0x{magic:08x}); IDX {kind} files "
            f"start with {_MAGIC[kind]} (0x{_MAGIC[kind]:08x})"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated: the header announces {ndim} dimensions but the file has {len(raw)} bytes")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [28, 28]:
        raise DataError(f"{name}: images are {'x'.join(map(str, dims[1:]))}, expected 28x28")
    expected = header + int(np.prod(dims, dtype=object))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise DataError(
            f"{name}: {what}: the header announces {'x'.join(map(str, dims))} values "
            f"({expected} bytes with the header) but the file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def check_pair(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str) -> None:
    """Raise DataError unless images and labels form one valid Fashion-MNIST split."""
    if len(images) != len(labels):
        raise DataError(f"{images_name} holds {len(images)} images but {labels_name} holds {len(labels)} labels")
    if len(labels) and labels.max() > 9:
        bad = int(np.flatnonzero(labels > 9)[0])
        raise DataError(f"{labels_name}: label {int(labels[bad])} at position {bad}, expected 0-9")


def split_train_val(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle range(n) with `seed` and return (train indices, validation indices)."""
    if not 0 <= val_size < n:
        raise DataError(f"cannot hold out {val_size} validation images from {n} training images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def class_counts(labels: torch.Tensor) -> dict[str, int]:
    counts = torch.bincount(labels, minlength=len(CLASSES)).tolist()
    return {name: int(c) for name, c in zip(CLASSES, counts)}


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28), standardised with the published statistics."""
    return ((images.float() / 255.0) - MEAN).div_(STD).unsqueeze(1)


def augment(x: torch.Tensor, generator: torch.Generator, *, flip: bool = True, shift: int = 0,
            erase: float = 0.0) -> torch.Tensor:
    """Augment a normalised batch (N, 1, 28, 28) as one tensor, on whatever device `x` is.

    - `flip`: mirror a random half of the images left to right (garments are
      left-right symmetric classes);
    - `shift`: move each image by up to `shift` pixels in each direction (the
      uncovered border is background);
    - `erase`: with this probability, blank a random rectangle of each image (random
      erasing: 2% to 25% of the image, aspect ratio 1:3 to 3:1) to the mean grey.

    Every draw comes from `generator` (a CPU generator), the same number of draws per
    batch whatever the settings' outcome, so a batch is augmented alike on every device.
    """
    n, device = x.shape[0], x.device
    if flip:
        flipped = (torch.rand(n, generator=generator) < 0.5).to(device)
        x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(3), x)
    if shift:
        d = torch.randint(-shift, shift + 1, (2, n, 1), generator=generator).to(device)
        side = x.shape[-1]
        ramp = torch.arange(side, device=device)
        rows, cols = (ramp + d[0]).clamp_(-1, side), (ramp + d[1]).clamp_(-1, side)
        # Pad one background pixel on every side; out-of-range indices land on it.
        padded = F.pad(x, (1, 1, 1, 1), value=(0 - MEAN) / STD)
        x = padded[torch.arange(n, device=device).view(-1, 1, 1), 0, (rows + 1)[:, :, None], (cols + 1)[:, None, :]]
        x = x.unsqueeze(1)
    if erase:
        side = x.shape[-1]
        u = torch.rand(5, n, generator=generator)
        area = (0.02 + 0.23 * u[0]) * side * side
        ratio = torch.exp(math.log(1 / 3) + 2 * math.log(3) * u[1])
        h = (area * ratio).sqrt().round().clamp(1, side)
        w = (area / ratio).sqrt().round().clamp(1, side)
        top, left = (u[2] * (side - h + 1)).floor(), (u[3] * (side - w + 1)).floor()
        on = u[4] < erase
        box = torch.stack([top, top + h, left, left + w]).to(device)
        ramp = torch.arange(side, device=device)
        inside_rows = (ramp >= box[0, :, None]) & (ramp < box[1, :, None])
        inside_cols = (ramp >= box[2, :, None]) & (ramp < box[3, :, None])
        mask = inside_rows[:, :, None] & inside_cols[:, None, :] & on.to(device).view(-1, 1, 1)
        x = x.masked_fill(mask.unsqueeze(1), 0.0)
    return x
