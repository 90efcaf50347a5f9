"""Stage `download`: put the four raw Fashion-MNIST IDX files, checked and uncompressed, in OUT.

    python stages/download.py data/raw

With the environment variable FASHION_MNIST_DIR naming a folder that holds the four
files (gzipped or not), they are read from there and nothing is downloaded. Otherwise
they are downloaded from the official mirrors torchvision knows, and their MD5 sums are
checked. Either way each file is parsed and checked before anything is written, so a
bad file never reaches the DVC cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import download_url

from common import atomic_path, run
from fmnist.data import EXPECTED_COUNTS, RAW_FILES, check_pair, decompress, parse_idx
from fmnist.errors import DataError

ENV = "FASHION_MNIST_DIR"
HINT = f"set {ENV} to a folder holding the four IDX files to use a local copy"


def read_local(folder: Path, name: str) -> bytes:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate.read_bytes()
    raise DataError(f"{folder / name}: missing (neither {name} nor {name}.gz is in {ENV}={folder})")


def download(name: str, workdir: Path, mirrors: list[str], md5s: dict[str, str]) -> bytes:
    """Fetch NAME.gz from the first mirror that serves it with the right MD5 sum."""
    filename = f"{name}.gz"
    failures = []
    for mirror in mirrors:
        try:
            download_url(mirror + filename, workdir, filename=filename, md5=md5s[filename])
            return (workdir / filename).read_bytes()
        except RuntimeError as exc:  # torchvision's word for a checksum mismatch
            failures.append(f"{mirror}{filename}: {exc} (MD5 sum is not {md5s[filename]})")
        except Exception as exc:  # network errors come in many types; each is reported
            failures.append(f"{mirror}{filename}: {type(exc).__name__}: {exc}")
        (workdir / filename).unlink(missing_ok=True)
    raise DataError(f"could not download {filename}: " + "; ".join(failures) + f". To work offline, {HINT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the four uncompressed IDX files to")
    args = parser.parse_args()

    source = os.environ.get(ENV)
    raw: dict[str, bytes] = {}
    if source:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise DataError(f"{ENV}={source}: no such folder; point it at a folder holding the four IDX files")
        print(f"reading the raw files from {ENV}={folder}")
        for name in RAW_FILES.values():
            raw[name] = decompress(read_local(folder, name), name)
    else:
        md5s = dict(FashionMNIST.resources)
        with tempfile.TemporaryDirectory() as workdir:
            for name in RAW_FILES.values():
                raw[name] = decompress(download(name, Path(workdir), FashionMNIST.mirrors, md5s), name)

    arrays = {name: parse_idx(raw[name], name, kind) for (_, kind), name in RAW_FILES.items()}
    for split, expected in EXPECTED_COUNTS.items():
        images, labels = RAW_FILES[split, "images"], RAW_FILES[split, "labels"]
        check_pair(arrays[images], arrays[labels], images, labels)
        if len(arrays[images]) != expected:
            print(f"note: {images} holds {len(arrays[images])} images; the official release has {expected}")

    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for name in arrays:
            # Stored uncompressed: the hash DVC pins then depends on the data, not on gzip headers.
            (tmp / name).write_bytes(raw[name])
    print(f"wrote {len(arrays)} files to {args.out}")


if __name__ == "__main__":
    run(main)
