"""The raw data: Fashion-MNIST's four IDX files, their format, where they come from.

    raw = fetch_raw(os.environ.get(RAW_ENV), workdir)      # {file name: uncompressed bytes}, checked
    images, labels = read_raw_split(Path("data/raw"), "train")   # uint8 (N, 28, 28), int64 (N,)

The files come from the folder FASHION_MNIST_DIR names (gzipped or not), or are
downloaded from the mirrors torchvision knows, with their MD5 sums checked. Either way
every file is parsed and checked before anyone writes it: a bad file never reaches the
DVC cache. Each file is read as a stream (`read_idx`) and stopped as soon as it is longer
than its header says or than any file of Fashion-MNIST can be (MAX_COUNT items): a gzip
bomb or a pipe fed forever costs one line naming the file, and at most MAX_COUNT items'
worth of memory. What is not a file (a folder, a device such as /dev/zero, a socket, a
loop of links, a named pipe with no writer) is refused unread (fmnist.core.io.check_input).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from fmnist.core.dataset import MAX_COUNT, OFFICIAL_COUNTS, SIZE
from fmnist.core.errors import DataError
from fmnist.core.io import open_bounded, read_bytes, size_text, what_is

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

# A header announcing more than MAX_COUNT items (the whole data set) is refused before its
# payload is read, and the payload is never read past what the header announces.
_ITEM_BYTES = {"images": SIZE * SIZE, "labels": 1}
_HEADER_BYTES = {"images": 4 + 4 * 3, "labels": 4 + 4 * 1}
_CHUNK = 1 << 20  # bytes decompressed or read at a time


def max_idx_bytes(kind: str) -> int:
    """The most bytes an uncompressed IDX file of Fashion-MNIST `kind` can hold: 54,880,016 for images."""
    return _HEADER_BYTES[kind] + MAX_COUNT * _ITEM_BYTES[kind]


def max_file_bytes(kind: str) -> int:
    """The most bytes an IDX file of `kind` can take on disk, gzipped or not: gzip adds at
    most 5 bytes a 64 KiB block (stored, incompressible data) to its content, plus its
    header; a thousandth and 64 KiB cover both. What gzip writes of Fashion-MNIST is
    half the size."""
    return max_idx_bytes(kind) + max_idx_bytes(kind) // 1000 + (64 << 10)


def _what(kind: str) -> str:
    return f"an IDX {kind} file of Fashion-MNIST ({MAX_COUNT:,} {kind} in all)"


# --- the IDX format -------------------------------------------------------------

def _read_exact(source: BinaryIO, view: memoryview) -> int:
    """Fill `view` from `source` a chunk at a time (no copy of the whole); the bytes read."""
    done = 0
    while done < len(view):
        got = source.readinto(view[done:done + _CHUNK])
        if not got:
            break
        done += got
    return done


def _read_plain_idx(source: BinaryIO, name: str, kind: str) -> bytearray:
    head = source.read(4)
    if len(head) == 0:
        raise DataError(f"{name}: the file is empty")
    if len(head) < 4:
        raise DataError(f"{name}: truncated: {len(head)} bytes, shorter than the 4-byte IDX header")
    magic = int.from_bytes(head, "big")
    if magic != _MAGIC[kind]:
        raise DataError(
            f"{name}: wrong magic number {magic} (0x{magic:08x}); IDX {kind} files "
            f"start with {_MAGIC[kind]} (0x{_MAGIC[kind]:08x})"
        )
    ndim = head[3]
    header = 4 + 4 * ndim
    head += source.read(4 * ndim)
    if len(head) < header:
        raise DataError(f"{name}: truncated: the header announces {ndim} dimensions but the file has {len(head)} bytes")
    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if kind == "images" and dims[1:] != [SIZE, SIZE]:
        raise DataError(f"{name}: images are {'x'.join(map(str, dims[1:]))}, expected {SIZE}x{SIZE}")
    if dims[0] > MAX_COUNT:
        raise DataError(f"{name}: the header announces {dims[0]:,} {kind}, more than Fashion-MNIST holds "
                        f"({MAX_COUNT:,} in all); not read further")
    expected = header + int(np.prod(dims, dtype=object))
    data = bytearray(expected)  # at most max_idx_bytes(kind), by the checks above
    data[:header] = head
    got = header + _read_exact(source, memoryview(data)[header:])
    if got < expected:
        raise DataError(
            f"{name}: truncated: the header announces {'x'.join(map(str, dims))} values "
            f"({expected} bytes with the header) but the file has {got} bytes"
        )
    if source.read(1):
        raise DataError(
            f"{name}: too long: the header announces {'x'.join(map(str, dims))} values "
            f"({expected} bytes with the header) but the file holds more; not read further"
        )
    return data


def read_idx(stream: BinaryIO, name: str, kind: str) -> bytearray:
    """The uncompressed bytes of the IDX file `stream` holds (gzipped or not), checked, read
    as a stream: never more than the header announces, nor more than MAX_COUNT items.

    `stream` needs peek() (open() and fmnist.core.io.open_bounded give one). Raises DataError
    naming `name` for anything else: bad gzip, short header, wrong magic number or
    dimensions, a payload shorter or longer than the header announces.
    """
    if stream.peek(2)[:2] != _GZIP_MAGIC:
        return _read_plain_idx(stream, name, kind)
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as source:
            return _read_plain_idx(source, name, kind)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{name}: not a readable gzip file ({exc})") from None


def idx_array(data: bytes | bytearray, kind: str) -> np.ndarray:
    """The read-only uint8 array (N, 28, 28) or (N,) of IDX bytes that read_idx checked."""
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    array.flags.writeable = False
    return array


def read_idx_file(path: Path, kind: str, hint: str) -> bytearray:
    """read_idx of a file, or a pipe something writes to: at most max_file_bytes(kind) are read;
    anything else (a device, a folder, a named pipe with no writer) is refused unread."""
    with open_bounded(path, hint, max_file_bytes(kind), _what(kind)) as stream:
        return read_idx(stream, str(path), kind)


def parse_idx(raw: bytes, name: str, kind: str) -> np.ndarray:
    """Parse IDX bytes (gzipped or not) holding Fashion-MNIST `kind` ("images" or "labels").

    Returns a read-only uint8 array (N, 28, 28) for images or (N,) for labels; raises
    DataError naming `name` for anything else (see read_idx).
    """
    return idx_array(read_idx(io.BufferedReader(io.BytesIO(raw)), name, kind), kind)


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
        arrays.append(idx_array(read_idx_file(path, kind, "run the download stage first (dvc repro)"), kind))
    check_pair(*arrays, str(raw_dir / RAW_FILES[split, "images"]), str(raw_dir / RAW_FILES[split, "labels"]))
    images, labels = arrays
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


# --- where the files come from ----------------------------------------------------

def _kind(name: str) -> str:
    return next(kind for (_, kind), file in RAW_FILES.items() if file == name)


def _there(path: Path) -> bool:
    """Whether `path` is there, whatever it is: a link to nothing, a loop of links, a pipe or a
    device too, which read_idx_file then refuses by name, saying what it is."""
    return os.path.lexists(path)


def _read_local(folder: Path, name: str) -> bytearray:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if _there(candidate):
            return read_idx_file(candidate, _kind(name), f"check {RAW_ENV}={folder}")
    raise DataError(f"{folder / name}: missing (neither {name} nor {name}.gz is in {RAW_ENV}={folder})")


def _fetch(url: str, path: Path, limit: int) -> str:
    """Stream `url` into `path`, at most `limit` bytes of it; its MD5 sum."""
    md5 = hashlib.md5(usedforsecurity=False)
    # torchvision's User-Agent, which the mirror knows.
    request = urllib.request.Request(url, headers={"User-Agent": "pytorch/vision"})  # noqa: S310 - torchvision's mirrors, https
    with urllib.request.urlopen(request, timeout=60) as response, open(path, "wb") as out:  # noqa: S310 - as above
        declared = response.headers.get("Content-Length")
        total = int(declared) if declared and declared.isdigit() and int(declared) <= limit else None
        # A bar on a terminal only (disable=None): logs and CI get the "downloading" line alone.
        with tqdm(total=total, desc=path.name, unit="B", unit_scale=True, leave=False, disable=None) as bar:
            done = 0
            while chunk := response.read(_CHUNK):
                done += len(chunk)
                if done > limit:
                    raise DataError(f"{url}: more than {size_text(limit)}, larger than the file can be; "
                                    f"not read further")
                md5.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
    return md5.hexdigest()


def download(name: str, workdir: Path, mirrors: list[str], md5s: dict[str, str]) -> bytes:
    """NAME.gz's bytes from the first mirror that serves it with the right MD5 sum; the
    download goes to `workdir` and is stopped past what the file can be."""
    filename = f"{name}.gz"
    kind = _kind(name)
    failures = []
    for mirror in mirrors:
        url, path = mirror + filename, workdir / filename
        try:
            print(f"downloading {url}", flush=True)
            md5 = _fetch(url, path, max_file_bytes(kind))
            if md5 != md5s[filename]:
                failures.append(f"{url}: its MD5 sum is {md5} (MD5 sum is not {md5s[filename]})")
            else:
                return read_bytes(path, f"the download from {url}", max_file_bytes(kind), _what(kind))
        except DataError as exc:
            failures.append(str(exc))
        except Exception as exc:  # noqa: BLE001 - network errors come in many types; each is reported
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
        path.unlink(missing_ok=True)
    raise DataError(f"could not download {filename}: " + "; ".join(failures) + f". To work offline, {_RAW_HINT}")


def fetch_raw(source: str | None, workdir: Path) -> dict[str, bytearray]:
    """The four raw files, uncompressed and checked, keyed by name.

    From the folder `source` (gzipped or not) when given, else downloaded from the
    mirrors torchvision knows, with their MD5 sums checked.
    """
    raw: dict[str, bytearray] = {}
    if source:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            found = what_is(folder)
            found = "no such folder" if found == "missing" else f"{found}, not a folder"
            raise DataError(f"{RAW_ENV}={source}: {found}; point it at a folder holding the four IDX files")
        # Every missing file named at once, not one per attempt.
        missing = [name for name in RAW_FILES.values() if not any(
            _there(folder / candidate) for candidate in (name, f"{name}.gz"))]
        if missing:
            raise DataError(f"{', '.join(missing)}: missing from {RAW_ENV}={folder} "
                            f"(neither NAME nor NAME.gz is there)")
        print(f"reading the raw files from {RAW_ENV}={folder}")
        for name in RAW_FILES.values():
            raw[name] = _read_local(folder, name)
    else:
        from torchvision.datasets import FashionMNIST

        md5s = dict(FashionMNIST.resources)
        for name in RAW_FILES.values():
            data = download(name, workdir, FashionMNIST.mirrors, md5s)
            raw[name] = read_idx(io.BufferedReader(io.BytesIO(data)), name, _kind(name))

    arrays = {name: idx_array(raw[name], kind) for (_, kind), name in RAW_FILES.items()}
    for split, expected in OFFICIAL_COUNTS.items():
        images, labels = RAW_FILES[split, "images"], RAW_FILES[split, "labels"]
        check_pair(arrays[images], arrays[labels], images, labels)
        if len(arrays[images]) != expected:
            print(f"note: {images} holds {len(arrays[images])} images; the official release has {expected}")
    return raw
