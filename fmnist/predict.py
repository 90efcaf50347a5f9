"""fmnist-predict: name the garment in pictures with the trained model.

    fmnist-predict shirt.jpg boot.png                 # a table: file, class, probability, runners-up
    fmnist-predict --json --top 3 pics/*.webp         # a JSON list, one object per picture
    fmnist-predict --rev fashion-classifier@v1.0.0 shirt.jpg   # a registered version, through DVC
    fmnist-predict --rev main~3 shirt.jpg             # the model of any commit, branch or tag
    fmnist-predict --info [--rev REV]                 # the model's card

PNG, JPEG or WebP of any size, grey or colour; a garment photographed dark on a light
ground is negated, as the data set's images are light on dark, and fitted into 28x28
keeping its aspect ratio (fmnist/images.py). The model is models/model.pt, another file
with --model, or the one of a git revision or registered version with --rev, read
through DVC from the cache or the default remote. Each picture's probabilities are
averaged with its mirror image's, as the evaluate stage does with evaluate.tta: true
(--no-tta: the picture alone). A picture that can't be read costs one line on stderr;
the others are still classified, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fmnist.classifier import Classifier, probabilities, top_k
from fmnist.errors import DataError, run
from fmnist.images import decode, to_fashion_mnist
from fmnist.io import md5_hex, read_bytes
from fmnist.model_file import MODEL_FILE, MODEL_HINT, card, model_from_bytes, read_model_bytes
from fmnist.provenance import first_commit_recording, read_model_bytes_at

BATCH = 256  # pictures per forward pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-predict", description="Name the garment in pictures with the trained model.",
        epilog="exit codes: 0 all pictures classified, 1 a picture or the model could not be read, "
               "2 bad arguments")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, metavar="PATH", help=f"a model file (default: {MODEL_FILE})")
    source.add_argument("--rev", help="a git commit, branch or tag, or a registered version such as "
                                      "fashion-classifier@v1.0.0: its model, read through DVC")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--top", type=int, default=3, metavar="K", help="classes to list per picture (default 3)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                        help="average with the mirror image's prediction, as the evaluate stage (default: on)")
    parser.add_argument("--info", action="store_true", help="print the model's card and exit")
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE", help="PNG, JPEG or WebP pictures")
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
        path = args.model or Path(MODEL_FILE)
        if args.model is not None:
            hint = "expected a model file of this project (models/model.pt)"
        elif path.exists():
            hint = MODEL_HINT
        else:
            hint = "run the train stage first (dvc repro), or name a model with --model or --rev"
        data = read_model_bytes(path, hint)
        name = str(path)
        commit = first_commit_recording(data, path.resolve().parent) if args.info else None
        meaning = ("the oldest commit whose dvc.lock records this file: the code, params and data that made it"
                   if commit else "not committed yet: no commit of a git repository around it has a dvc.lock "
                   "that records this file's md5")
    net, record = model_from_bytes(data, name, hint)
    return net, record, {"model": name, "md5": md5_hex(data), "bytes": len(data), "commit": commit,
                       "commit_means": meaning}


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
        ("params", " ".join(f"{k}={v}" for k, v in params.items()) or "unknown"),
        ("commit", f"{info['commit'] or '-'} ({info['commit_means']})"),
    ]
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def read_pictures(files: list[Path]) -> tuple[list[Path], list[torch.Tensor], int]:
    """(files read, their uint8 28x28 pixels, how many failed); each failure is one line on stderr."""
    good, pixels, failed = [], [], 0
    for path in files:
        try:
            pixels.append(to_fashion_mnist(decode(read_bytes(path, "expected a PNG, JPEG or WebP picture", 1 << 30, "a picture"), str(path))))
            good.append(path)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            failed += 1
    return good, pixels, failed


def print_table(rows: list[dict]) -> None:
    header = ("file", "class", "probability", "top")
    lines = [(r["path"], r["class"], f"{r['probability']:.3f}",
              ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])) for r in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(3)]
    for line in [header, *lines]:
        print(f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  {line[2]:>{widths[2]}}  {line[3]}")


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
    good, pixels, failed = read_pictures(args.files)
    images = torch.stack(pixels) if pixels else torch.zeros(0, 28, 28, dtype=torch.uint8)
    probs = probabilities(Classifier(net, mirror=args.tta), images, device=torch.device("cpu"), batch_size=BATCH)
    rows = []
    for path, p in zip(good, probs):
        top = [{"class": c, "probability": round(v, 6)} for c, v in top_k(p, classes, args.top)]
        rows.append({"path": str(path), "class": top[0]["class"], "probability": top[0]["probability"], "top": top})
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print_table(rows)
    if failed:
        print(f"error: {failed} of {len(args.files)} picture(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def main() -> None:
    """The console script: cli() with the project's one-line errors and exit codes."""
    run(cli)


if __name__ == "__main__":
    main()
