"""The raw data: Fashion-MNIST's four IDX files, their format, where they come from.

    raw = fetch_raw(os.environ.get(RAW_ENV), workdir)      # {file name: uncompressed bytes}, checked
    images, labels = read_raw_split(Path("data/raw"), "train")   # uint8 (N, 28, 28), int64 (N,)

The files come from the folder FASHION_MNIST_DIR names (gzipped or not), or are
downloaded from the mirrors torchvision knows, with their MD5 sums checked. Either way
every file is parsed and checked before anyone writes it: a bad file never reaches the
DVC cache.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from fmnist.dataset import OFFICIAL_COUNTS, SIZE
from fmnist.errors import DataError
from fmnist.io import read_bytes

# The four files of the standard release, keyed by split and kind.
RAW_FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
RAW_ENV = "FASHION_MNIST_DIR"  # a folder holding the four IDX files: no download
_RAW_HINT = f"set {RAW_ENV} to a folder holding the four IDX files to use a local copy"

_MAGIC = {"images": 2051, "labels": 2049}  # IDX: uint8 data, 3 dims / 1 dim
_GZIP_MAGIC = b"\x1f\x8b"


# --- the IDX format -------------------------------------------------------------

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
    if kind == "images" and dims[1:] != [SIZE, SIZE]:
        raise DataError(f"{name}: images are {'x'.join(map(str, dims[1:]))}, expected {SIZE}x{SIZE}")
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


def read_raw_split(raw_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (uint8 N x 28 x 28) and labels (int64 N) of one split of the raw IDX files."""
    arrays = []
    for kind in ("images", "labels"):
        path = raw_dir / RAW_FILES[split, kind]
        arrays.append(parse_idx(read_bytes(path, "run the download stage first (dvc repro)"), str(path), kind))
    check_pair(*arrays, str(raw_dir / RAW_FILES[split, "images"]), str(raw_dir / RAW_FILES[split, "labels"]))
    images, labels = arrays
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


# --- where the files come from ----------------------------------------------------

def _read_local(folder: Path, name: str) -> bytes:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return read_bytes(candidate, f"check {RAW_ENV}={folder}")
    raise DataError(f"{folder / name}: missing (neither {name} nor {name}.gz is in {RAW_ENV}={folder})")


def download(name: str, workdir: Path, mirrors: list[str], md5s: dict[str, str]) -> bytes:
    """Fetch NAME.gz from the first mirror that serves it with the right MD5 sum."""
    from torchvision.datasets.utils import download_url

    filename = f"{name}.gz"
    failures = []
    for mirror in mirrors:
        try:
            download_url(mirror + filename, workdir, filename=filename, md5=md5s[filename])
            return (workdir / filename).read_bytes()
        except RuntimeError as exc:  # torchvision's word for a checksum mismatch
            failures.append(f"{mirror}{filename}: {exc} (MD5 sum is not {md5s[filename]})")
        except Exception as exc:  # noqa: BLE001 - network errors come in many types; each is reported
            failures.append(f"{mirror}{filename}: {type(exc).__name__}: {exc}")
        (workdir / filename).unlink(missing_ok=True)
    raise DataError(f"could not download {filename}: " + "; ".join(failures) + f". To work offline, {_RAW_HINT}")


def fetch_raw(source: str | None, workdir: Path) -> dict[str, bytes]:
    """The four raw files, uncompressed and checked, keyed by name.

    From the folder `source` (gzipped or not) when given, else downloaded from the
    mirrors torchvision knows, with their MD5 sums checked.
    """
    raw: dict[str, bytes] = {}
    if source:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise DataError(f"{RAW_ENV}={source}: no such folder; point it at a folder holding the four IDX files")
        # Every missing file named at once, not one per attempt.
        missing = [name for name in RAW_FILES.values() if not any(
            (folder / candidate).exists() for candidate in (name, f"{name}.gz"))]
        if missing:
            raise DataError(f"{', '.join(missing)}: missing from {RAW_ENV}={folder} "
                            f"(neither NAME nor NAME.gz is there)")
        print(f"reading the raw files from {RAW_ENV}={folder}")
        for name in RAW_FILES.values():
            raw[name] = decompress(_read_local(folder, name), name)
    else:
        from torchvision.datasets import FashionMNIST

        md5s = dict(FashionMNIST.resources)
        for name in RAW_FILES.values():
            raw[name] = decompress(download(name, workdir, FashionMNIST.mirrors, md5s), name)

    arrays = {name: parse_idx(raw[name], name, kind) for (_, kind), name in RAW_FILES.items()}
    for split, expected in OFFICIAL_COUNTS.items():
        images, labels = RAW_FILES[split, "images"], RAW_FILES[split, "labels"]
        check_pair(arrays[images], arrays[labels], images, labels)
        if len(arrays[images]) != expected:
            print(f"note: {images} holds {len(arrays[images])} images; the official release has {expected}")
    return raw
