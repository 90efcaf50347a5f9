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

from fmnist.core.errors import run
from fmnist.core.io import write_folder
from fmnist.raw import RAW_ENV, fetch_raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write the four uncompressed IDX files to")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        raw = fetch_raw(os.environ.get(RAW_ENV), Path(workdir))
    # Stored uncompressed: the hash DVC pins then depends on the data, not on gzip headers.
    write_folder(args.out, raw)
    print(f"wrote {len(raw)} files to {args.out}")


if __name__ == "__main__":
    run(main)
