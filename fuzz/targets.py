"""The fuzz targets: one entry of TARGETS per reader of a file the project takes in.

A target names the file its input is written to, the reader it calls on that file (the
entry point the stages and commands use), an optional check of what the reader returns,
the modules whose branches guide the fuzzer, and the bounds the input must stay within.
A new target is one more `Target(...)` in TARGETS (and a folder of seeds,
fuzz/corpus/<name>/, which fuzz/seeds.py can write).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fmnist.core.dataset import CLASSES, MAX_COUNT, SIZE
from fmnist.core.errors import PipelineError
from fuzz.oracle import Broken, line_problem, message_problem
from fuzz.torchfiles import Template

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Target:
    name: str
    what: str                    # one line for --list and docs/fuzzing.md
    filename: str                # the input is written to a file of this name (messages name it)
    read: Callable[[Path], Any]  # the reader: returns a result or raises
    result_problem: Callable[[Any], str | None] | None = None  # what is wrong with a result, if anything
    refused: Callable[[Any], bool] = lambda result: False  # a result that says no (a checkpoint not resumed)
    prepare: Callable[[bytes], bytes] = lambda data: data      # the fuzz input -> the file's bytes
    instrument: tuple[str, ...] = ()  # modules (with their submodules) whose branches guide the fuzzer, besides fmnist
    words: Callable[[], list[bytes]] = list  # libFuzzer's dictionary: tokens worth inserting (none)
    rss_limit_mb: int = 2048     # the whole process, torch included (about 700 MB)
    timeout: int = 20            # seconds an input may take
    seeds: Path = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "seeds", CORPUS / self.name)


# --- the IDX files -------------------------------------------------------------

KINDS = ("images", "labels")


def read_idx(path: Path) -> list:
    """The file read as each kind of IDX file: a list of arrays, where it is one; when it is
    neither, the error of reading it as images (the other's message checked too)."""
    from fmnist.raw import idx_array, read_idx_file

    outcomes = []
    for kind in KINDS:
        try:
            outcomes.append(idx_array(read_idx_file(path, kind, "run the download stage first"), kind))
        except PipelineError as exc:
            problem = message_problem(str(exc))
            if problem:
                raise Broken(f"idx: read as {kind}, the message of {type(exc).__name__} {problem}: "
                             f"{str(exc)[:300]!r}") from exc
            outcomes.append(exc)
    if all(isinstance(outcome, PipelineError) for outcome in outcomes):
        raise outcomes[0]
    return [outcome for outcome in outcomes if not isinstance(outcome, PipelineError)]


def idx_problem(arrays: list) -> str | None:
    for array in arrays:
        if not (array.dtype == np.uint8 and array.shape in ((len(array), SIZE, SIZE), (len(array),))
                and len(array) <= MAX_COUNT):
            return f"is {array.dtype} {array.shape}"
    return None


def idx_words() -> list[bytes]:
    return [(2051).to_bytes(4, "big"), (2049).to_bytes(4, "big"), SIZE.to_bytes(4, "big"),
            MAX_COUNT.to_bytes(4, "big"), (MAX_COUNT + 1).to_bytes(4, "big"), b"\x1f\x8b\x08\x00"]


# --- torch files: the model, the checkpoint, the prepared splits ------------------

def torch_words(template: Template) -> Callable[[], list[bytes]]:
    """The names a template's pickle holds (keys, classes, torch's rebuild functions), as pickle strings."""
    def words() -> list[bytes]:
        from fuzz.torchfiles import split

        pickle = split(template.file())[0]
        found = {b"torch._utils\n_rebuild_tensor_v2\n", b"collections\nOrderedDict\n", b"torch\nFloatStorage\n",
                 b"torch\nLongStorage\n", b"torch\nByteStorage\n", b"torch\nHalfStorage\n", b"storage"}
        for start in range(len(pickle)):  # SHORT_BINUNICODE and BINUNICODE strings: 0x8c len / X len(4)
            if pickle[start] == 0x8C and start + 1 < len(pickle):
                found.add(pickle[start:start + 2 + pickle[start + 1]])
            elif pickle[start] == 0x58 and start + 5 <= len(pickle):
                n = int.from_bytes(pickle[start + 1:start + 5], "little")
                if 0 < n < 64:
                    found.add(pickle[start:start + 5 + n])
        return sorted(found)
    return words


# The model file: lenet (the smallest net, 178 KB of weights) as save_model writes it.

@functools.cache
def model_file() -> bytes:
    from fmnist.model.model_file import save_model
    from fmnist.model.nets import build_model

    torch.manual_seed(0)
    net = build_model("lenet", len(CLASSES))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_model(path, net.state_dict(), params=dict(CHECKPOINT_PARAMS), epoch=2, val_acc=0.5,
                   data_sha256="ab" * 32, environment={"python": "3.11.7", "torch": "2.14.1",
                                                       "platform": "linux-x86_64",
                                                       "lock": "requirements/runtime-versions.txt",
                                                       "lock_sha256": "cd" * 32})
        return path.read_bytes()


MODEL = Template(model_file)


def read_model(path: Path) -> tuple[str, str]:
    """load_model, then what `fmnist-predict --info` prints of the file: its card as a table and as JSON."""
    from fmnist.model.model_file import card, load_model
    from fmnist.serve.predict import print_card

    _, record = load_model(path)
    info = {"model": str(path), "md5": "0" * 32, "bytes": 0, "commit": None, "commit_means": "not committed",
            **card(record)}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_card(info)
    return out.getvalue(), json.dumps(info, indent=2)  # --info, --info --json


def model_problem(outcome: tuple[str, str]) -> str | None:
    printed = outcome[0]
    table = printed.split("\n")
    if len(table) != 10 or table[-1]:  # nine rows, each ended by a newline
        return f"is a card of {len(table) - 1} lines, not 9: {printed[:300]!r}"
    for line in table[:-1]:
        if not line.isprintable():
            return f"is a card with unprintable characters: {line[:200]!r}"
    return None


# The checkpoint: a lenet run of two epochs of two steps on 32 random images, as the
# train stage saves it after each epoch; resumed by a run of the same params.

CHECKPOINT_PARAMS = {"model": "lenet", "epochs": 2, "batch_size": 16, "optimizer": "sgd", "lr": 0.05,
                     "momentum": 0.9, "weight_decay": 0.0005, "label_smoothing": 0.1,
                     "augment": {"flip": True, "shift": 0, "erase": 0.0}, "ema": 0.9, "seed": 0, "device": "cpu",
                     "precision": "fp32", "compile": False, "nproc": 1, "max_restarts": 0, "resume": True}
TRAIN_IMAGES = 32


@functools.cache
def checkpoint_params():
    """CHECKPOINT_PARAMS as the train stage holds them (fmnist.params.Train)."""
    from fmnist.params import Train

    return Train.model_validate(CHECKPOINT_PARAMS)


@functools.cache
def checkpoint_run() -> tuple[dict, int]:
    """(the run's key, its steps an epoch)."""
    from fmnist.training.checkpoint import run_key
    from fmnist.training.distributed import steps_per_epoch

    images, labels = tiny_split(TRAIN_IMAGES + 16, seed=1)
    key = run_key(checkpoint_params(), images[:TRAIN_IMAGES], labels[:TRAIN_IMAGES], 1)
    return key, steps_per_epoch(TRAIN_IMAGES, CHECKPOINT_PARAMS["batch_size"])


@functools.cache
def checkpoint_files() -> tuple[bytes, ...]:
    """The checkpoint after each epoch of the run."""
    from fmnist.core.io import torch_bytes
    from fmnist.training.checkpoint import checkpoint_state
    from fmnist.training.loop import build, fit

    images, labels = tiny_split(TRAIN_IMAGES + 16, seed=1)
    train = images[:TRAIN_IMAGES], labels[:TRAIN_IMAGES]
    val = images[TRAIN_IMAGES:], labels[TRAIN_IMAGES:]
    state = build(checkpoint_params(), train[0], CPU)
    saved = []
    fit(state, train, val, checkpoint_params(),
        on_epoch=lambda progress, _: saved.append(torch_bytes(checkpoint_state(progress, checkpoint_run()[0], state))))
    return tuple(saved)


def checkpoint_file() -> bytes:
    return checkpoint_files()[-1]


CHECKPOINT = Template(checkpoint_file)


def read_checkpoint(path: Path) -> tuple[Any, str]:
    """What the train stage does with train.resume: true: resume (a Progress, or None and a
    fresh start) into a freshly built run, and the line it printed."""
    from fmnist.training.checkpoint import resume
    from fmnist.training.loop import build

    key, steps = checkpoint_run()
    state = build(checkpoint_params(), tiny_split(TRAIN_IMAGES + 16, seed=1)[0][:TRAIN_IMAGES], CPU)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        progress = resume(path, key, state, steps)
    return progress, out.getvalue()


def checkpoint_problem(outcome: tuple[Any, str]) -> str | None:
    from fmnist.training.loop import Progress

    progress, said = outcome
    lines = said.rstrip("\n").split("\n")
    if len(lines) != 1:
        return f"printed {len(lines)} lines: {said[:300]!r}"
    problem = line_problem(lines[0])
    if problem:
        return f"printed a line that {problem}"
    if progress is not None and not (isinstance(progress, Progress)
                                     and 1 <= progress.epoch <= CHECKPOINT_PARAMS["epochs"]):
        return f"is {progress!r:.200}"
    return None


# The prepared splits: eight images.

def tiny_split(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, size=(n, SIZE, SIZE), dtype=np.uint8))
    return images, torch.from_numpy(np.arange(n) % len(CLASSES)).long()


@functools.cache
def split_file() -> bytes:
    from fmnist.core.io import torch_bytes
    from fmnist.splits import split_file as split_dict

    return torch_bytes(split_dict(*tiny_split(8)))


SPLIT = Template(split_file)


def read_split(path: Path):
    from fmnist.splits import load_split

    return load_split(path)


def split_problem(outcome) -> str | None:
    images, labels = outcome
    n = len(labels)
    if not (images.dtype == torch.uint8 and images.shape == (n, SIZE, SIZE) and labels.dtype == torch.int64
            and labels.shape == (n,)):
        return f"is images {images.dtype} {tuple(images.shape)}, labels {labels.dtype} {tuple(labels.shape)}"
    if n > MAX_COUNT:
        return f"holds {n:,} images, more than Fashion-MNIST's {MAX_COUNT:,}"
    return None


# --- pictures ------------------------------------------------------------------

def read_picture(path: Path) -> torch.Tensor:
    from fmnist.serve.predict import read_picture as read

    return read(path)


def picture_problem(pixels) -> str | None:
    if not (isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8 and pixels.shape == (SIZE, SIZE)):
        return f"is {pixels!r:.200}"
    return None


def picture_words() -> list[bytes]:
    return [b"\x89PNG\r\n\x1a\n", b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"eXIf", b"iCCP", b"acTL", b"fcTL",
            b"fdAT", b"\xff\xd8\xff", b"\xff\xc0", b"\xff\xc2", b"\xff\xda", b"\xff\xdb", b"\xff\xc4",
            b"\xff\xe1", b"Exif\x00\x00", b"II*\x00", b"MM\x00*", b"GIF89a", b"NETSCAPE2.0", b"BM",
            b"RIFF", b"WEBPVP8 ", b"WEBPVP8L", b"WEBPVP8X", b"ANIM", b"ANMF"]


# --- params.yaml and sweep.yaml --------------------------------------------------

YAML_WORDS = [b": ", b"\n  ", b"- ", b"{", b"}", b"[", b"]", b", ", b"true", b"false", b"null", b"~", b".inf",
              b"-.inf", b".nan", b"1e-5", b"1.0e-5", b"0x10", b"0o7", b"-1", b"0", b"2147483648", b"1e400",
              b"&a ", b"*a", b"<<: ", b"!!str ", b"!!int ", b"!!float ", b"!!binary ", b"!!set ", b"!!omap ",
              b"!!python/tuple ", b"? ", b"|\n", b">\n", b"---\n", b"...\n", b"%YAML 1.1\n", b"'", b'"', b"#"]


@functools.cache
def params_yaml() -> dict:
    """The committed params.yaml, as the sweep's trials start from it."""
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def params_words() -> list[bytes]:
    doc = params_yaml()
    names = [*doc, *(key for section in doc.values() for key in section)]
    values = [str(v).encode() for section in doc.values() for v in section.values()]
    return [*YAML_WORDS, *(f"{name}: ".encode() for name in names), *values, b"cnn6", b"lenet", b"adamw", b"bf16"]


def read_params(path: Path):
    from fmnist.params import load_params

    return load_params(path)


def sweep_words() -> list[bytes]:
    doc = params_yaml()
    names = [f"{section}.{key}" for section, keys in doc.items() for key in keys]
    return [*YAML_WORDS, *(f"{name}: ".encode() for name in names), b"space:\n", b"sampler:\n", b"pruner:\n",
            b"low: ", b"high: ", b"log: ", b"step: ", b"choices: ", b"seed: ", b"startup_trials: ",
            b"percentile: ", b"min_epochs: "]


def read_sweep(path: Path):
    from fmnist.sweep.search_space import load_space

    return load_space(path, copy.deepcopy(params_yaml()), {})


def sweep_problem(config) -> str | None:
    try:  # stored with the study (a JSON attribute) when a sweep starts
        json.dumps(config.as_dict())
    except (TypeError, ValueError) as exc:
        return f"can't be stored with the study: {exc}"
    return None


# --- the registry ------------------------------------------------------------------

TORCH = ("torch.serialization", "torch._weights_only_unpickler", "zipfile")

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("idx", "a raw IDX file (gzipped or not), read as images and as labels: fmnist.raw.read_idx_file",
           "train-images-idx3-ubyte", read_idx, idx_problem, instrument=("gzip",), words=idx_words),
    Target("model", "the model file: fmnist.model.model_file.load_model, then the card fmnist-predict --info prints",
           "model.pt", read_model, model_problem, prepare=MODEL.assemble, instrument=(*TORCH, "pickletools"),
           words=torch_words(MODEL)),
    Target("checkpoint", "the training checkpoint: fmnist.training.checkpoint.resume into a fresh run",
           "checkpoint.pt", read_checkpoint, checkpoint_problem, lambda outcome: outcome[0] is None,
           CHECKPOINT.assemble, instrument=TORCH,
           words=torch_words(CHECKPOINT)),
    Target("splits", "a prepared split: fmnist.splits.load_split", "train.pt", read_split, split_problem,
           prepare=SPLIT.assemble, instrument=TORCH, words=torch_words(SPLIT)),
    # A picture within the limits may decode to 537 megapixels (docs/model.md: 2.8 GB at
    # most in fmnist-predict), and that takes seconds.
    Target("picture", "a picture for fmnist-predict: fmnist.serve.predict.read_picture (Pillow)", "picture",
           read_picture, picture_problem, instrument=("PIL",), words=picture_words, rss_limit_mb=3584,
           timeout=60),
    Target("params", "params.yaml: fmnist.params.load_params", "params.yaml", read_params,
           instrument=("yaml",), words=params_words),
    Target("sweep", "sweep.yaml: fmnist.sweep.search_space.load_space on the committed params.yaml",
           "sweep.yaml", read_sweep, sweep_problem, instrument=("yaml", "optuna.distributions", "difflib"),
           words=sweep_words),
)}
