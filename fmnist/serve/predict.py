"""fmnist-predict: name the garment in pictures with the trained model.

    fmnist-predict shirt.jpg boot.png                 # a table: file, class, probability, runners-up
    fmnist-predict --json --top 3 pics/*.webp         # a JSON list, one object per picture
    fmnist-predict --rev fashion-classifier@v1.0.0 shirt.jpg   # a registered version, through DVC
    fmnist-predict --rev main~3 shirt.jpg             # the model of any commit, branch or tag
    fmnist-predict --info [--rev REV]                 # the model's card
    curl -s https://example.com/shirt.jpg | fmnist-predict -    # one picture from standard input

PNG, JPEG, WebP, GIF, BMP or TIFF up to 537 megapixels, grey or colour; a garment
photographed dark on a light ground is negated, as the data set's images are light on
dark, and fitted into 28x28 keeping its aspect ratio (fmnist/serve/images.py). The model is models/model.pt,
another file with --model, or the one of a git revision or registered version with --rev, read
through DVC from the cache or the default remote. Each picture's probabilities are
averaged with its mirror image's, as the evaluate stage does with evaluate.tta: true
(--no-tta: the picture alone). A picture that can't be read costs one line on stderr;
the others are still classified, and the exit code is 1. `-` is standard input, read
whole (up to MAX_FILE_BYTES) as one picture, and so are /dev/stdin and the shell's
`<(...)`; what is not a picture file (a folder, a device, a named pipe with no writer)
is refused at once, unread (fmnist.core.io.check_input), so nothing waits on it.

Any number of pictures, in batches of BATCH: a batch is decoded one picture at a time
(each kept as its 28x28 pixels only), classified and printed before the next is read, so
memory is that of one decoded picture (bounded by fmnist.serve.images.MAX_PIXELS: at most
about 2.2 GB) plus one batch: 256 x 784 bytes of pixels and the net's activations for
256 images (about 35 MB for cnn3v2, mirror-averaged: bench/pictures.py), whatever the
number of files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from fmnist.core.errors import DataError, flat, run
from fmnist.core.io import md5_hex, open_bounded
from fmnist.model.classifier import Classifier, probabilities, top_k
from fmnist.model.model_file import MODEL_HINT, card, model_from_bytes, read_model_bytes
from fmnist.serve.images import FORMAT_NAMES, MAX_FILE_BYTES, PICTURE_HINT, PICTURE_WHAT, decode, to_fashion_mnist
from fmnist.serve.provenance import first_commit_recording, model_path, read_model_bytes_at

BATCH = 256  # pictures decoded, classified and printed at a time


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-predict", description="Name the garment in pictures with the trained model.",
        epilog="exit codes: 0 all pictures classified, 1 a picture or the model could not be read, "
               "2 bad arguments")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, metavar="PATH",
                        help="a model file (default: dvc.yaml's vars.model, models/model.pt)")
    source.add_argument("--rev", help="a git commit, branch or tag, or a registered version such as "
                                      "fashion-classifier@v1.0.0: its model, read through DVC")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--top", type=int, default=3, metavar="K", help="classes to list per picture (default 3)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="average with the mirror image's prediction, as the evaluate stage (default: on)")
    parser.add_argument("--info", action="store_true", help="print the model's card and exit")
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE",
                        help=f"{FORMAT_NAMES} pictures; - reads one from standard input")
    args = parser.parse_args(argv)
    if not args.info and not args.files:
        parser.error("name at least one picture (or --info for the model's card)")
    if args.top < 1:
        parser.error(f"--top: got {args.top}, expected 1 or more")
    return args


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, dict, dict]:
    """(net, the model file's dict, where it came from: name, md5, commit and what the commit means)."""
    if args.rev:
        data, where = read_model_bytes_at(args.rev)
        name = f"{where['path']} at {args.rev}"
        meaning = (f"what {args.rev} points at: its dvc.lock records this model with the code, params "
                   f"and data that made it")
        commit = where["commit"]
        hint = f"the copy DVC holds for {args.rev} is not a model of this project"
    else:
        path = args.model or Path(model_path())
        if args.model is not None:
            hint = "expected a model file of this project (models/model.pt)"
        elif path.exists():
            hint = MODEL_HINT
        else:
            hint = (f"looked for it in {Path.cwd()}, the current folder: run the command in the "
                    "project's folder after its train stage (dvc repro), or name a model with --model or --rev")
        data = read_model_bytes(path, hint)
        name = str(path)
        commit = first_commit_recording(data, path.resolve().parent) if args.info else None
        meaning = ("the oldest commit whose dvc.lock records this file: the code, params and data that made it"
                   if commit else "not committed yet: no commit of a git repository around it has a dvc.lock "
                   "that records this file's md5")
    net, record = model_from_bytes(data, name, hint)
    return net, record, {"model": name, "md5": md5_hex(data), "bytes": len(data), "commit": commit,
                       "commit_means": meaning}


def environment_line(environment: dict | None) -> str:
    """python 3.11.7, torch 2.14.1, linux-x86_64, lock requirements/runtime-versions.txt sha256 ..."""
    if not environment:
        return "unknown (a model file older than the record)"
    known = ("python", "torch", "platform")
    words = [f"{k} {environment[k]}" if k != "platform" else environment[k] for k in known if k in environment]
    if "lock_sha256" in environment:
        words.append(f"lock {environment.get('lock', '?')} sha256 {environment['lock_sha256']}")
    return ", ".join(words) or "unknown"


def flat_params(params: dict, prefix: str = "") -> list[str]:
    """A card's params as key=value words, a group's keys dotted (augment.flip=True). A
    file from elsewhere may hold anything: one level of groups is followed, values are cut short."""
    words = []
    for key, value in params.items():
        if isinstance(value, dict) and not prefix:
            words += flat_params(value, f"{key}.")
        else:
            text = value if isinstance(value, (bool, int, float, str)) else repr(value)
            words.append(f"{prefix}{key}={flat(text, 60)}")
    return words


def print_card(info: dict) -> None:
    params = info["params"] or {}
    epochs = f" of {params['epochs']}" if "epochs" in params else ""
    val_acc = f"{info['val_acc']:.4f}" if isinstance(info["val_acc"], float) else "unknown"
    rows = [
        ("model", f"{info['model']} (md5 {info['md5']}, {info['bytes']} bytes)"),
        ("architecture", info["architecture"]),
        ("classes", ", ".join(info["classes"])),
        ("best epoch", f"{info['best_epoch'] or 'unknown'}{epochs}"),
        ("val accuracy", val_acc),
        ("data sha256", f"{info['data_sha256'] or 'unknown'} (the training images and labels)"),
        ("params", " ".join(flat_params(params)) or "unknown"),
        ("environment", environment_line(info["environment"])),
        ("commit", f"{info['commit'] or '-'} ({info['commit_means']})"),
    ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def read_picture(path: Path) -> torch.Tensor:
    """A picture file as uint8 28x28 pixels; DataError naming it when it can't be (fmnist.serve.images)."""
    with open_bounded(path, PICTURE_HINT, MAX_FILE_BYTES, PICTURE_WHAT) as stream:
        return to_fashion_mnist(decode(stream, str(path)))


def read_batches(files: list[Path], failed: list[Path]) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """(files, their uint8 (n, 28, 28) pixels), BATCH files at a time; a file that can't be
    read is one line on stderr, added to `failed`, and left out."""
    for start in range(0, len(files), BATCH):
        good, pixels = [], []
        for path in files[start:start + BATCH]:
            try:
                pixels.append(read_picture(path))
                good.append(path)
            except DataError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                failed.append(path)
        if good:
            yield good, torch.stack(pixels)


class Printer:
    """Rows printed as they come: a table whose columns fit every file named and every class
    (known before any picture is read), or one JSON list, as json.dumps(rows, indent=2)."""

    def __init__(self, as_json: bool, files: list[Path], classes: list[str]):
        self.as_json, self.rows = as_json, 0
        self.widths = (max(len("file"), *(len(str(f)) for f in files)), max(len("class"), *map(len, classes)),
                       len("probability"))

    def _line(self, *cells: str) -> None:
        w = self.widths
        print(f"{cells[0]:<{w[0]}}  {cells[1]:<{w[1]}}  {cells[2]:>{w[2]}}  {cells[3]}")

    def add(self, row: dict) -> None:
        if self.as_json:
            body = json.dumps(row, indent=2).replace("\n", "\n  ")
            sys.stdout.write(("[\n  " if self.rows == 0 else ",\n  ") + body)
        else:
            if self.rows == 0:
                self._line("file", "class", "probability", "top")
            self._line(row["path"], row["class"], f"{row['probability']:.3f}",
                       ", ".join(f"{t['class']} {t['probability']:.3f}" for t in row["top"]))
        self.rows += 1

    def end(self) -> None:
        if self.as_json:
            print("\n]" if self.rows else "[]")
        sys.stdout.flush()


def cli(argv: list[str] | None = None) -> int:
    """The command with its arguments (sys.argv's by default); returns the exit code."""
    args = parse_args(argv)
    net, record, where = load(args)
    if args.info:
        info = {**where, **card(record)}
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print_card(info)
        return 0
    classes = list(record["classes"])
    classifier = Classifier(net, mirror=args.tta)
    printer = Printer(args.json, args.files, classes)
    failed: list[Path] = []
    for good, images in read_batches(args.files, failed):
        probs = probabilities(classifier, images, device=torch.device("cpu"), batch_size=BATCH)
        for path, p in zip(good, probs, strict=True):
            top = [{"class": c, "probability": round(v, 6)} for c, v in top_k(p, classes, args.top)]
            printer.add({"path": str(path), "class": top[0]["class"], "probability": top[0]["probability"],
                         "top": top})
        sys.stdout.flush()
    printer.end()
    if failed:
        print(f"error: {len(failed)} of {len(args.files)} picture(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def main() -> None:
    """The console script: cli() with the project's one-line errors and exit codes."""
    run(cli)


if __name__ == "__main__":
    main()
