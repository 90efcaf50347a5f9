"""The model file (models/model.pt): what the train stage writes and everyone else reads.

    save_model(Path("models/model.pt"), weights, params=p, epoch=7, val_acc=0.93, data_sha256=digest,
               environment=describe(Path("requirements/runtime-versions.txt")))
    net, record = load_model(Path("models/model.pt"))   # net in eval mode, the file's dict
    card(record)                                        # what the file says of itself

One torch file (weights_only loadable: no code runs from it) holding a dict:

| key | what |
|---|---|
| state_dict | the net's weights, of the best validation epoch (the moving average with train.ema) |
| model | the architecture, a name of fmnist.model.nets.ARCHITECTURES |
| classes | the ten class names, in label order |
| params | the params' train section the net was trained with |
| epoch | the epoch kept (best validation accuracy) |
| val_acc | its validation accuracy (a fraction) |
| data_sha256 | sha256 of the training images and labels |
| environment | what trained it (environment.describe): python, torch, platform, the runtime lock and its sha256 |

The evaluate and export stages, `fmnist-predict` and `make compare` read it through
`load_model` / `model_from_bytes`, which check every key before a net is built; a file
larger than MAX_MODEL_BYTES (what the largest architecture's file can be) is refused
before it is read.
"""

from __future__ import annotations

import io
import json
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch

from fmnist.core.dataset import CLASSES
from fmnist.core.errors import DataError, quoted, shown
from fmnist.core.io import read_bytes, read_stream, save_torch, torch_from_bytes
from fmnist.model.nets import ARCHITECTURES, build_model, weights_problem

MODEL_HINT = "re-create it with `dvc repro --force train` (or `dvc checkout` to restore the cached one)"
REQUIRED = ("state_dict", "model", "classes")
MODEL_WHAT = "a model file of this project"


def weights_bytes(name: str) -> int:
    """The bytes of architecture `name`'s state_dict (its tensors' data), built on the meta device: no memory."""
    with torch.device("meta"):
        net = build_model(name, len(CLASSES))
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


# A model file is one state_dict (the largest of ARCHITECTURES: cnn6's 1,156,272 bytes)
# plus a few kilobytes of names, params and zip records (7 KB measured); 1 MiB more is
# room for any params. A model file is not read, nor its records inflated, past this.
MAX_MODEL_BYTES = max(map(weights_bytes, ARCHITECTURES)) + (1 << 20)


def save_model(path: Path, state_dict: dict, *, params: dict, epoch: int, val_acc: float, data_sha256: str,
               environment: dict[str, str]) -> None:
    """Write the model file: the weights and what they were trained with (the table above)."""
    params = json.loads(json.dumps(params))  # plain data, shared with no other object of the file
    save_torch(path, {
        "state_dict": state_dict, "model": params["model"], "classes": list(CLASSES),
        "params": params, "epoch": epoch, "val_acc": val_acc, "data_sha256": data_sha256,
        "environment": environment})


CHECKPOINT_KEYS = {"optimizer", "history", "best"}  # what fmnist.training.checkpoint writes and a model file lacks


def not_a_checkpoint(name: str, hint: str) -> DataError:
    return DataError(f"{name}: this is a training checkpoint, not a model file (the train stage writes both); {hint}")


def looks_like_checkpoint(source: Any) -> bool:
    """Whether a torch file (a path or a binary file object) too large to be a model file is a
    checkpoint: its pickle (a few KB; read to 1 MiB at most and never unpickled, only its
    opcodes listed) names the keys a checkpoint has. The weights' records are not read."""
    try:
        with zipfile.ZipFile(source) as archive:
            pickle = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if pickle is None:
                return False
            with archive.open(pickle) as stream:
                data = read_stream(stream, pickle, "", 1 << 20)
        strings = {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    except Exception:  # noqa: BLE001 - anything unreadable is simply not a checkpoint; the size check says the rest
        return False
    return CHECKPOINT_KEYS <= strings


def check_model(obj: Any, name: str, hint: str = MODEL_HINT) -> tuple[torch.nn.Module, dict]:
    """The net a model file's dict describes, with its weights loaded, and the dict itself."""
    need = set(REQUIRED)
    if isinstance(obj, dict) and CHECKPOINT_KEYS <= set(obj):
        raise not_a_checkpoint(name, hint)
    if not isinstance(obj, dict) or not need <= set(obj):
        found = f"keys {sorted(map(str, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DataError(f"{name}: not a model file of this project (expected keys {sorted(need)}, "
                        f"found {found}); {hint}")
    if not isinstance(obj["model"], str) or obj["model"] not in ARCHITECTURES:
        raise DataError(f"{name}: unknown architecture {shown(obj['model'])} "
                        f"(known: {', '.join(ARCHITECTURES)}); {hint}")
    classes = obj["classes"]
    # The net's last layer has one output per class, and the labels are 0-9. The names are
    # printed (the card, fmnist-predict's table): short, printable text.
    if not isinstance(classes, (list, tuple)) or len(classes) != len(CLASSES) \
            or not all(isinstance(c, str) and 0 < len(c) <= 100 and c.isprintable() for c in classes):
        raise DataError(f"{name}: 'classes' should be a list of {len(CLASSES)} class names, "
                        f"found {shown(classes)}; {hint}")
    net = build_model(obj["model"], len(classes))
    problem = weights_problem(obj["state_dict"], net)
    if problem:
        raise DataError(f"{name}: not the weights of a {obj['model']} net: {quoted(problem)}; {hint}")
    net.load_state_dict(obj["state_dict"])
    return net.eval(), obj


def model_from_bytes(data: bytes, name: str, hint: str = MODEL_HINT) -> tuple[torch.nn.Module, dict]:
    """A model file's bytes (read with read_model_bytes, or by DVC at a revision) as (net in eval mode, its dict)."""
    if len(data) > MAX_MODEL_BYTES and looks_like_checkpoint(io.BytesIO(data)):
        raise not_a_checkpoint(name, hint)
    return check_model(torch_from_bytes(data, name, hint, MAX_MODEL_BYTES, MODEL_WHAT), name, hint)


def read_model_bytes(path: Path, hint: str = MODEL_HINT) -> bytes:
    """A model file's bytes, refused unread when it is larger than MAX_MODEL_BYTES
    (named as a checkpoint when it is one: the train stage writes one beside it)."""
    try:
        too_large = path.stat().st_size > MAX_MODEL_BYTES and path.is_file()
    except OSError:
        too_large = False  # read_bytes names the problem
    if too_large and looks_like_checkpoint(path):
        raise not_a_checkpoint(str(path), hint)
    return read_bytes(path, hint, MAX_MODEL_BYTES, MODEL_WHAT)


def load_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """models/model.pt as the train stage wrote it: (net in eval mode, the file's dict)."""
    hint = "run the train stage first (dvc repro)" if not path.exists() else MODEL_HINT
    return model_from_bytes(read_model_bytes(path, hint), str(path), hint)


def card(record: dict) -> dict:
    """What a (checked) model file says of itself; keys a file of an older version lacks, or
    holds something else in (a file may come from anywhere, and its card is printed as text
    and as JSON), are None."""
    epoch, val_acc, digest = record.get("epoch"), record.get("val_acc"), record.get("data_sha256")
    return {
        "architecture": record["model"],
        "classes": list(record["classes"]),
        "best_epoch": epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        "val_acc": float(val_acc) if isinstance(val_acc, (int, float)) and not isinstance(val_acc, bool) else None,
        "data_sha256": digest if isinstance(digest, str) and len(digest) <= 200 and digest.isprintable() else None,
        # The train section holds one level of groups (augment: flip, shift, erase).
        "params": _plain(record.get("params"), (str, int, float, bool, type(None)), 64, groups=True),
        "environment": _plain(record.get("environment"), (str,), 16),
    }


def _plain(found: Any, kinds: tuple[type, ...], most: int, groups: bool = False) -> dict | None:
    """`found` if it is a small dict of short printable names to values of `kinds` (short
    printable text where text), or with `groups` also to such dicts, one level deep; None
    otherwise (a file of an older version, or a damaged one)."""
    if not isinstance(found, dict) or len(found) > most:
        return None
    plain = {}
    for k, v in found.items():
        if not (isinstance(k, str) and len(k) <= 40 and k.isprintable()):
            return None
        if groups and isinstance(v, dict):
            plain[k] = _plain(v, kinds, most)
            if plain[k] is None:
                return None
        elif type(v) in kinds and (not isinstance(v, str) or (len(v) <= 200 and v.isprintable())):
            plain[k] = v
        else:
            return None
    return plain
