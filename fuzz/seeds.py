"""Write the generated seed corpus: python -m fuzz.seeds [TARGET ...]

Each target's folder, fuzz/corpus/<target>/, holds a few genuine inputs (valid-*: each
must give a result) and a few damaged ones (damaged-*), all of a few kilobytes; the torch
targets' are pickles that fuzz/torchfiles.py zips with the weights of their template at
run time. This script re-creates every valid-* and damaged-* file (and removes such
files it no longer makes); other files, the inputs fuzzing found (crash-*, timeout-*,
oom-*, each with a regression test), are left alone.
"""

from __future__ import annotations

import copy
import gzip
import io
import pickle
import sys
import zipfile

import numpy as np
import torch
import yaml
from PIL import Image

from fmnist.core.dataset import CLASSES, SIZE
from fmnist.core.io import torch_bytes
from fuzz.targets import MODEL, ROOT, SPLIT, TARGETS, checkpoint_files, tiny_split
from fuzz.torchfiles import split


def _pickle(obj) -> bytes:
    return split(torch_bytes(obj))[0]


def _load(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


def _bomb(declared: int) -> bytes:
    """A zip of a few hundred bytes whose one record declares `declared` bytes (its
    uncompressed size, in the local header and the central directory, says so)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("archive/data.pkl", date_time=(1980, 1, 1, 0, 0, 0)), b"\x00" * 1000,
                         compress_type=zipfile.ZIP_DEFLATED)
    data = bytearray(out.getvalue())
    size = declared.to_bytes(4, "little")
    data[22:26] = size  # the local file header's uncompressed size
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = size
    return bytes(data)


def _hash_bomb() -> bytes:
    """A pickle of {key: 1} whose key is a tuple of two copies of the tuple below, 40 deep (2^40
    parts, 200 bytes: the memo shares them); loading it hashes the key, walking every part."""
    key = ()
    for _ in range(40):
        key = (key, key)
    data = bytearray(pickle.dumps([key, 1], protocol=2))  # a list: pickling it hashes nothing
    data[2:3], data[-2:-1] = b"}", b"u"  # EMPTY_LIST ... APPENDS becomes EMPTY_DICT ... SETITEMS
    return bytes(data)


# --- idx -------------------------------------------------------------------------

def _idx(array: np.ndarray, magic: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def idx_seeds() -> dict[str, bytes]:
    images, labels = tiny_split(2)
    images, labels = images.numpy(), labels.numpy().astype(np.uint8)
    plain_images, plain_labels = _idx(images, 2051), _idx(labels, 2049)
    return {
        "valid-images": plain_images,
        "valid-labels": plain_labels,
        "valid-images.gz": gzip.compress(plain_images, mtime=0),
        "valid-labels.gz": gzip.compress(plain_labels, mtime=0),
        "valid-empty-labels": _idx(labels[:0], 2049),
        "damaged-magic": (2049).to_bytes(4, "big") + plain_images[4:],
        "damaged-truncated": plain_images[:-100],
        "damaged-too-long": plain_labels + b"\x00",
        "damaged-huge-count": (2051).to_bytes(4, "big") + (2**31).to_bytes(4, "big") + plain_images[8:64],
        "damaged-27x28": _idx(images[:, :27], 2051),
        "damaged-gzip": gzip.compress(plain_labels, mtime=0)[:-12] + b"junk",
        "damaged-label-12": _idx(np.array([3, 12], dtype=np.uint8), 2049),
    }


# --- torch files ---------------------------------------------------------------------

def model_seeds() -> dict[str, bytes]:
    good = _load(MODEL.file())
    older = {k: good[k] for k in ("state_dict", "model", "classes")}
    seeds = {"valid-lenet.pkl": split(MODEL.file())[0], "valid-older.pkl": _pickle(older)}
    damages = {
        "architecture": lambda m: m.update(model="resnet"),
        "classes": lambda m: m.update(classes=m["classes"][:9]),
        "checkpoint": lambda m: m.update(optimizer={}, history=[], best={}),
        "params": lambda m: m.update(params=["lenet", 2]),
        "environment": lambda m: m.update(environment={"python": 3.11}),
        "missing-weight": lambda m: m["state_dict"].pop("0.bias"),
        "shapes": lambda m: m["state_dict"].update({"0.bias": m["state_dict"]["9.bias"]}),
    }
    for name, damage in damages.items():
        obj = copy.copy(good)
        obj["state_dict"] = dict(good["state_dict"])
        damage(obj)
        seeds[f"damaged-{name}.pkl"] = _pickle(obj)
    laughs = ["x"] * 10
    for _ in range(9):  # a billion leaves in a few hundred bytes: pickle's memo shares each list
        laughs = [laughs] * 10
    seeds["damaged-laughs.pkl"] = _pickle({**good, "classes": laughs})
    seeds["damaged-huge-int.pkl"] = _pickle({**good, "model": 10 ** 5000})  # repr() refuses it
    seeds["damaged-hash-bomb.pkl"] = _hash_bomb()
    seeds["damaged-list.pkl"] = _pickle([good["model"], good["classes"]])
    seeds["damaged-truncated.pt"] = torch_bytes({"model": "lenet", "classes": list(CLASSES)})[:700]
    seeds["damaged-bomb.pt"] = _bomb(3 << 20)
    seeds["damaged-not-torch"] = b"state_dict: not a torch file\n"
    return seeds


def checkpoint_seeds() -> dict[str, bytes]:
    files = checkpoint_files()
    good = _load(files[-1])
    seeds = {f"valid-epoch-{i}.pkl": split(data)[0] for i, data in enumerate(files, 1)}
    damages = {
        "key": lambda c: c.update(key={**c["key"], "world": 2}),
        "history": lambda c: c.update(history=c["history"][:1]),
        "best": lambda c: c.update(best={**c["best"], "epoch": 3}),
        "ema": lambda c: c.update(ema={**c["ema"], "updates": 1}),
        "scheduler": lambda c: c.update(scheduler={**c["scheduler"], "last_epoch": 1}),
        "momentum": lambda c: c["optimizer"]["state"].update({0: c["optimizer"]["state"][1]}),
        "epoch": lambda c: c.update(epoch=True),
    }
    for name, damage in damages.items():
        obj = copy.deepcopy(good)
        damage(obj)
        seeds[f"damaged-{name}.pkl"] = _pickle(obj)
    seeds["damaged-model-file.pkl"] = split(MODEL.file())[0]  # the same weights lead both files
    seeds["damaged-truncated.pt"] = torch_bytes({"epoch": 1, "key": {}})[:500]
    wide = torch.zeros(1, dtype=torch.long).expand(10**9)  # compared with the run's key: a GB of booleans
    seeds["damaged-wide-key.pt"] = torch_bytes({"epoch": 1, "key": {**good["key"], "world": wide}})
    seeds["damaged-bomb.pt"] = _bomb(8 << 20)
    return seeds


def splits_seeds() -> dict[str, bytes]:
    images, labels = tiny_split(2)

    def whole(obj) -> bytes:
        return torch_bytes(obj)

    return {
        "valid-8.pkl": split(SPLIT.file())[0],
        "valid-2.pt": whole({"images": images, "labels": labels}),
        "valid-empty.pt": whole({"images": images[:0], "labels": labels[:0]}),
        "damaged-labels-int32.pt": whole({"images": images, "labels": labels.int()}),
        "damaged-mismatch.pt": whole({"images": images, "labels": labels[:1]}),
        "damaged-label-12.pt": whole({"images": images, "labels": torch.tensor([1, 12])}),
        "damaged-keys.pt": whole({"pixels": images, "labels": labels}),
        "damaged-27x28.pt": whole({"images": images[:, :27].clone(), "labels": labels}),
        "damaged-tuple.pt": whole((images, labels)),
        "damaged-bomb.pt": _bomb(60 << 20),
        "damaged-wide.pt": whole({"images": torch.zeros(1, 1, 1, dtype=torch.uint8).expand(10**9, SIZE, SIZE),
                                  "labels": torch.zeros(1, dtype=torch.long).expand(10**9)}),  # 10^9 images, 2 KB
    }


# --- pictures ----------------------------------------------------------------------

def _save(im: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **options)
    return out.getvalue()


def picture_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    garment = np.full((30, 40), 230, dtype=np.uint8)
    garment[5:25, 10:30] = rng.integers(0, 90, size=(20, 20))  # dark on a light ground, as on paper
    grey = Image.fromarray(garment)
    rgb = Image.merge("RGB", (grey, grey.point(lambda v: v * 0.9), grey.point(lambda v: v * 0.7)))
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.where(garment > 200, 0, 255).astype(np.uint8)))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90 degrees
    frames = [grey, grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    stored = Image.fromarray(tiny_split(1)[0][0].numpy())  # an image of the data set's size
    png = _save(grey, "PNG")
    return {
        "valid-grey.png": png,
        "valid-28x28.png": _save(stored, "PNG"),
        "valid-rgba.png": _save(rgba, "PNG"),
        "valid-16bit.png": _save(Image.fromarray(garment.astype(np.uint16) * 257), "PNG"),
        "valid-palette.gif": _save(rgb.convert("P"), "GIF"),
        "valid-animated.gif": animated.getvalue(),
        "valid-baseline.jpg": _save(rgb, "JPEG", quality=80),
        "valid-progressive.jpg": _save(rgb, "JPEG", quality=80, progressive=True),
        "valid-cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG", quality=80),
        "valid-rotated.jpg": _save(grey, "JPEG", quality=80, exif=exif.tobytes()),
        "valid-lossy.webp": _save(rgb, "WEBP", quality=80),
        "valid-lossless.webp": _save(rgba, "WEBP", lossless=True),
        "valid-rgb.bmp": _save(rgb, "BMP"),
        "valid-lzw.tiff": _save(rgb, "TIFF", compression="tiff_lzw"),
        "damaged-truncated.png": png[:len(png) // 2],
        "damaged-huge.png": png[:16] + (100_000).to_bytes(4, "big") * 2 + png[24:],  # a wrong CRC too
        "damaged-float.tiff": _save(Image.fromarray(garment.astype(np.float32)), "TIFF"),
        "damaged-not-a-picture": b"GIF87a? no, text\n",
    }


# --- params.yaml and sweep.yaml ------------------------------------------------------


# Ten lines of YAML whose aliases make a billion leaves ("billion laughs").
LAUGHS = "".join(f"{a}: &{a} [{', '.join([f'*{p}' if p else 'x'] * 10)}]\n"
                 for a, p in zip("abcdefghi", ["", *"abcdefgh"], strict=True)).encode()


def params_seeds() -> dict[str, bytes]:
    text = (ROOT / "params.yaml").read_text()
    doc = yaml.safe_load(text)

    def changed(**sections) -> bytes:
        out = copy.deepcopy(doc)
        for section, values in sections.items():
            out.setdefault(section, {}).update(values)
        return yaml.safe_dump(out, sort_keys=False).encode()

    return {
        "valid-params.yaml": text.encode(),
        "valid-flow.yaml": yaml.safe_dump(doc, default_flow_style=True, sort_keys=False).encode(),
        "damaged-lr.yaml": changed(train={"lr": -0.1}),
        "damaged-unknown-key.yaml": changed(train={"lrr": 0.1}),
        "damaged-three.yaml": changed(train={"epochs": 0, "model": "resnet"}, data={"seed": -1}),
        "damaged-nproc.yaml": changed(train={"nproc": 4, "batch_size": 2}),
        "damaged-anchors.yaml": b"data: &d {val_size: 5000, seed: 0}\ntrain: {lr: *d}\nevaluate: *d\n",
        "damaged-laughs.yaml": LAUGHS + b"train: {lr: *i}\n",
        "damaged-not-yaml.yaml": b"train: [\n  lr: 0.1\n",
        "damaged-empty.yaml": b"",
        "damaged-latin1.yaml": "train: {model: caf\u00e9}\n".encode("latin-1"),
    }


def sweep_seeds() -> dict[str, bytes]:
    return {
        "valid-sweep.yaml": (ROOT / "sweep.yaml").read_bytes(),
        "valid-small.yaml": b"space:\n  train.lr: {low: 0.01, high: 1, log: true}\n"
                            b"  train.model: {choices: [lenet, cnn]}\n"
                            b"  train.augment.shift: {low: 0, high: 4, step: 2}\nsampler: {seed: 3}\n",
        "damaged-unknown-param.yaml": b"space:\n  train.lrr: {low: 0.1, high: 0.2}\n",
        "damaged-range.yaml": b"space:\n  train.lr: {low: 0.5, high: 0.1}\n",
        "damaged-log.yaml": b"space:\n  train.erase: {low: 0.0, high: 0.5, log: true}\n",
        "damaged-not-searchable.yaml": b"space:\n  data.seed: {low: 0, high: 9}\n",
        "damaged-one-choice.yaml": b"space:\n  train.optimizer: {choices: [sgd]}\n",
        "damaged-float-text.yaml": b"space:\n  train.weight_decay: {low: 1e-5, high: 1e-3}\n",
        "damaged-pruner.yaml": b"space:\n  train.lr: {low: 0.1, high: 0.2}\npruner: {percentile: 100}\n",
        "damaged-not-yaml.yaml": b"space: {train.lr: [\n",
        "damaged-laughs.yaml": LAUGHS + b"space: {train.lr: {low: *i, high: 1}}\n",
    }


SEEDS = {"idx": idx_seeds, "model": model_seeds, "checkpoint": checkpoint_seeds, "splits": splits_seeds,
         "picture": picture_seeds, "params": params_seeds, "sweep": sweep_seeds}


def main(names: list[str]) -> None:
    if set(SEEDS) != set(TARGETS):
        raise SystemExit(f"targets without seeds, or seeds without a target: {set(SEEDS) ^ set(TARGETS)}")
    for name in names or SEEDS:
        folder = TARGETS[name].seeds
        folder.mkdir(parents=True, exist_ok=True)
        seeds = SEEDS[name]()
        for old in folder.iterdir():
            if old.name.startswith(("valid-", "damaged-")) and old.name not in seeds:
                old.unlink()
        for file, data in seeds.items():
            (folder / file).write_bytes(data)
        print(f"{name}: {len(seeds)} seeds, {sum(map(len, seeds.values())):,} bytes in {folder.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
