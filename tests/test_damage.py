"""Damaged files, a full disk, SIGTERM: one line naming the file, what is wrong and what
to do; exit 1 (143 on SIGTERM); the previous outputs left whole.

The unit tests call the package's readers and fmnist.checkpoint directly on damaged copies; the
e2e tests damage a real pipeline's files and run its stage scripts as subprocesses,
the commands dvc.yaml runs.
"""

from __future__ import annotations

import copy
import ctypes
import io
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import ROOT, TINY_PARAMS, make_repo, set_params, synthetic, write_raw
from fmnist.checkpoint import ResumeError, checkpoint_state, restore
from fmnist.classifier import Classifier, score
from fmnist.dataset import CLASSES
from fmnist.distributed import steps_per_epoch
from fmnist.errors import DataError, OutputError, ParamError
from fmnist.io import torch_bytes, write_bytes, write_folder
from fmnist.model import build_model
from fmnist.model_file import load_model
from fmnist.params import load_params
from fmnist.splits import load_split
from fmnist.training import Settings, build, fit

CPU = torch.device("cpu")


def one_line(message: str, *expected: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for text in expected:
        assert text in message, message


# --- prepared splits ----------------------------------------------------------

def good_split(n: int = 12) -> dict:
    images, labels = synthetic(n, seed=0)
    return {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels).long()}


def _split(**changes) -> bytes:
    split = good_split()
    split.update(changes)
    return torch_bytes({k: v for k, v in split.items() if v is not None})


GOOD_SPLIT = torch_bytes(good_split())
DAMAGED_SPLITS = {
    "empty": (b"", "the file is empty"),
    "truncated": (GOOD_SPLIT[:len(GOOD_SPLIT) // 2], "not a readable torch file, truncated or damaged"),
    "garbage": (b"\x80\x02garbage" * 50, "not a torch file (it doesn't start like one)"),
    "a list": (torch_bytes([1, 2, 3]), "expected a dict with 'images' and 'labels', found a list"),
    "a bare tensor": (torch_bytes(torch.zeros(3, 28, 28)), "found a Tensor"),
    "no labels": (_split(labels=None), "found keys ['images']"),
    "float images": (_split(images=torch.zeros(12, 28, 28)), "'images' should be uint8 (N, 28, 28), found torch.float32"),
    "32x32 images": (_split(images=torch.zeros(12, 32, 32, dtype=torch.uint8)), "found torch.uint8 (12, 32, 32)"),
    "int32 labels": (_split(labels=torch.zeros(12, dtype=torch.int32)), "'labels' should be int64 (N,)"),
    "2-d labels": (_split(labels=torch.zeros(12, 2, dtype=torch.long)), "found torch.int64 (12, 2)"),
    "fewer labels": (_split(labels=torch.zeros(11, dtype=torch.long)), "12 images but 11 labels"),
    "label 10": (_split(labels=torch.full((12,), 10)), "labels outside 0-9"),
}


@pytest.mark.parametrize("damage", DAMAGED_SPLITS)
def test_a_damaged_split_is_a_data_error_naming_the_file(tmp_path, damage):
    data, expected = DAMAGED_SPLITS[damage]
    path = tmp_path / "train.pt"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_split(path)
    one_line(str(err.value), f"{path}: ", expected, "dvc repro --force prepare")


def test_a_missing_split_or_a_folder_in_its_place(tmp_path):
    with pytest.raises(DataError, match=r"train.pt: missing; run the prepare stage first \(dvc repro\)"):
        load_split(tmp_path / "train.pt")
    (tmp_path / "train.pt").mkdir()
    with pytest.raises(DataError, match=r"train.pt: cannot be read \(Is a directory\)"):
        load_split(tmp_path / "train.pt")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(GOOD_SPLIT)), flips=st.lists(st.tuples(st.integers(0, len(GOOD_SPLIT) - 1),
                                                                     st.integers(1, 255)), max_size=4))
def test_any_truncation_or_flipped_bytes_give_checked_tensors_or_a_data_error(tmp_path, cut, flips):
    data = bytearray(GOOD_SPLIT[:cut])
    for at, xor in flips:
        if at < len(data):
            data[at] ^= xor
    path = tmp_path / "val.pt"
    path.write_bytes(bytes(data))
    try:
        images, labels = load_split(path)
    except DataError as exc:
        one_line(str(exc), f"{path}: ")
    else:
        assert images.dtype == torch.uint8 and images.shape[1:] == (28, 28) and len(labels) == len(images)
        assert labels.dtype == torch.int64 and (len(labels) == 0 or 0 <= labels.min() <= labels.max() <= 9)


def _leaves(node, path=()):
    """Every place a value sits in a nest of dicts and lists (a model file, a checkpoint), as a path of keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, path + (i,))
    if path:
        yield path


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True), st.text(max_size=3),
                 st.lists(st.integers(), max_size=2), st.just({}),
                 st.builds(torch.zeros, st.lists(st.integers(0, 3), max_size=3).map(tuple)))


# --- models -------------------------------------------------------------------

def good_model(arch: str = "lenet") -> dict:
    return {"state_dict": build_model(arch).state_dict(), "model": arch, "classes": list(CLASSES),
            "params": {}, "epoch": 1, "val_acc": 0.5}


def _model(**changes) -> dict:
    model = good_model()
    model.update(changes)
    return model


def _weights(key: str, value) -> dict:
    model = good_model()
    model["state_dict"][key] = value
    return model


def _without(key: str) -> dict:
    model = good_model()
    del model[key]
    return model


DAMAGED_MODELS = {
    "truncated": (torch_bytes(good_model())[:5000], "not a readable torch file, truncated or damaged"),
    "garbage": (b"garbage" * 100, "not a torch file (it doesn't start like one)"),
    "a checkpoint": (torch_bytes({"epoch": 1, "key": {}, "state_dict": {}, "optimizer": {}, "scheduler": {},
                                  "history": [], "best": {}}), "this is a training checkpoint, not a model file"),
    "a tensor": (torch_bytes(torch.zeros(3)), "not a model file of this project"),
    "no classes": (torch_bytes(_without("classes")), "expected keys ['classes', 'model', 'state_dict']"),
    "unknown architecture": (torch_bytes(_model(model="resnet")), "unknown architecture 'resnet'"),
    "architecture a list": (torch_bytes(_model(model=["cnn"])), "unknown architecture ['cnn']"),
    "three classes": (torch_bytes(_model(classes=["a", "b", "c"])), "'classes' should be a list of 10 class names"),
    "weights a string": (torch_bytes(_model(state_dict="weights")), "the weights are a str, not a dict of tensors"),
    "a weight missing": (torch_bytes(_model(state_dict={})), "not the weights of a lenet net: 10 weights missing (0.bias, 0.weight, 11.bias, ...)"),
    "wrong shape": (torch_bytes(_weights("0.weight", torch.zeros(3, 3))),
                    "weight 0.weight is torch.float32 (3, 3), expected torch.float32 (6, 1, 5, 5)"),
    "wrong dtype": (torch_bytes(_weights("0.weight", torch.zeros(6, 1, 5, 5, dtype=torch.float64))),
                    "weight 0.weight is torch.float64"),
    "NaN weights": (torch_bytes(_weights("0.weight", torch.full((6, 1, 5, 5), float("nan")))),
                    "weight 0.weight holds NaN or infinite values"),
    "cnn weights called lenet": (torch_bytes({**good_model("cnn"), "model": "lenet"}),
                                 "not the weights of a lenet net"),
}


@pytest.mark.parametrize("damage", DAMAGED_MODELS)
def test_a_damaged_model_is_a_data_error_naming_the_file(tmp_path, damage):
    data, expected = DAMAGED_MODELS[damage]
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_model(path)
    one_line(str(err.value), f"{path}: ", expected, "dvc repro --force train")


def test_a_good_model_loads():
    for arch in ("lenet", "cnn"):
        net, card = load_model_from_bytes(torch_bytes(good_model(arch)))
        assert card["model"] == arch and not net.training


def load_model_from_bytes(data: bytes):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.pt").write_bytes(data)
        return load_model(Path(tmp) / "model.pt")


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_value_anywhere_in_a_model_file_is_refused_or_scores(data):
    """What evaluate does with the model: a DataError, or a net that scores the test set."""
    model = good_model()
    where = data.draw(st.sampled_from(sorted(_leaves(model), key=str)))
    node = model
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = data.draw(JUNK)
    try:
        net, _ = load_model_from_bytes(torch_bytes(model))
    except DataError as exc:
        one_line(str(exc), "model.pt: ")
    else:
        x, y = (torch.from_numpy(a) for a in synthetic(8, seed=1))
        result = score(Classifier(net, mirror=True), x, y.long(), device=CPU, batch_size=4)
        assert result.probs.shape == (8, 10) and bool(torch.isfinite(result.probs).all())


# --- checkpoints under train.resume -------------------------------------------

P = {**yaml.safe_load((ROOT / "params.yaml").read_text())["train"],
     "model": "lenet", "epochs": 2, "batch_size": 16, "lr": 0.05, "device": "cpu", "precision": "fp32"}
KEY = {"params": "the train params", "world": 1, "data_sha256": "abc"}


def tiny_data():
    x, y = (torch.from_numpy(a) for a in synthetic(60, seed=3))
    return (x[:40], y[:40].long()), (x[40:], y[40:].long())


ADAMW = {**P, "optimizer": "adamw", "lr": 0.01}


def fresh(p: dict = P):
    train, _ = tiny_data()
    return build(p, len(train[1]), CPU)


def steps(p: dict = P) -> int:
    return steps_per_epoch(40, p["batch_size"])


def loop_settings(p: dict) -> Settings:
    return Settings.from_params(p, CPU, None, progress_bar=False)


def _genuine(p: dict):
    train, val = tiny_data()
    state = fresh(p)
    progress = fit(state, train, val, loop_settings({**p, "epochs": 1}))
    saved = torch.load(io.BytesIO(torch_bytes(checkpoint_state(progress, KEY, state))), weights_only=True)
    state = fresh(p)
    straight = fit(state, train, val, loop_settings(p))
    return saved, state.net.state_dict(), straight


@pytest.fixture(scope="module")
def genuine():
    """A checkpoint after epoch 1 of 2 (SGD), round-tripped through bytes like the one on
    disk, and the weights of the uninterrupted run."""
    return _genuine(P)


@pytest.fixture(scope="module")
def genuine_adamw():
    return _genuine(ADAMW)


def resume_and_finish(checkpoint, p: dict = P):
    """restore() into a fresh run, then train it to the end, as the train stage does."""
    train, val = tiny_data()
    state = fresh(p)
    progress = restore(checkpoint, KEY, state, steps(p))
    progress = fit(state, train, val, loop_settings(p), progress)
    return state.net, progress


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_genuine_checkpoint_resumes_to_the_uninterrupted_weights(request, optimizer):
    saved, weights, straight = request.getfixturevalue("genuine" if optimizer == "sgd" else "genuine_adamw")
    net, progress = resume_and_finish(copy.deepcopy(saved), P if optimizer == "sgd" else ADAMW)
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())
    assert progress.history == straight.history and progress.best["epoch"] == straight.best["epoch"]


def _set(*where):
    """A damage that puts where[-1] at the path where[:-1] of the checkpoint."""
    *path, value = where

    def damage(checkpoint):
        node = checkpoint
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value(checkpoint) if callable(value) else value
        return checkpoint
    return damage


DAMAGED_CHECKPOINTS = {
    "a list": (lambda c: [1, 2], "is not a training checkpoint"),
    "other params": (_set("key", "world", 2), "was made with other train params, process count or data"),
    "a tensor for a key": (_set("key", torch.zeros(3)), "was made with other train params"),
    "epoch a float": (_set("epoch", 1.5), "epoch 1.5, expected a whole number >= 1"),
    "history a string": (_set("history", "x"), "1 epochs done but the history is 'x'"),
    "a row of history a string": (_set("history", 0, "x"), "a row of history is 'x'"),
    "a loss that is a string": (_set("history", 0, "val/loss", "low"), "a row of history is"),
    "best is None": (_set("best", None), "'best' is None"),
    "best epoch beyond the run": (_set("best", "epoch", 5), "the best epoch 5 doesn't match the history"),
    "best accuracy changed": (_set("best", "val_acc", 2.0), "doesn't match the history"),
    "best weights an extra key": (_set("best", "state_dict", "extra", torch.zeros(1)),
                                  "best weights: 1 unexpected weights (extra)"),
    "weights of the wrong shape": (_set("state_dict", "0.weight", torch.zeros(2, 2)), "weights: weight 0.weight is"),
    "NaN weights": (_set("state_dict", "0.weight", lambda c: torch.full_like(c["state_dict"]["0.weight"], float("nan"))),
                    "holds NaN or infinite values"),
    "momentum of the wrong shape": (_set("optimizer", "state", 0, "momentum_buffer", torch.zeros(2)),
                                    "optimizer state 'momentum_buffer' doesn't fit its weight"),
    "momentum missing": (_set("optimizer", "state", 0, {}), "the optimizer's state doesn't cover every weight"),
    "optimizer groups missing": (_set("optimizer", "param_groups", []), "the optimizer's settings or learning rate"),
    "optimizer settings changed": (_set("optimizer", "param_groups", 0, "momentum", 0.5),
                                   "the optimizer's settings or learning rate differ from this run's"),
    "learning rate changed": (_set("optimizer", "param_groups", 0, "lr", 1e6), "learning rate differ"),
    "schedule garbage": (_set("scheduler", "base_lrs", "x"), "the schedule isn't where 1 epoch(s) of this run leave it"),
    "schedule at another step": (_set("scheduler", "last_epoch", 7), "the schedule isn't where"),
    "schedule counter a string": (_set("scheduler", "_step_count", "x"), "the schedule isn't where"),
    "schedule a list": (_set("scheduler", [1]), "the schedule isn't where"),
    "moving average missing": (_set("ema", None), "the moving average of the weights is None"),
    "moving average at another step": (_set("ema", "updates", 1), "the moving average of the weights is"),
    "averaged weights of the wrong shape": (_set("ema", "state_dict", "0.weight", torch.zeros(2)),
                                            "averaged weights: weight 0.weight is"),
}


@pytest.mark.parametrize("damage", DAMAGED_CHECKPOINTS)
def test_a_damaged_checkpoint_is_refused_saying_why(genuine, damage):
    mutate, expected = DAMAGED_CHECKPOINTS[damage]
    checkpoint = mutate(copy.deepcopy(genuine[0]))
    with pytest.raises(ResumeError) as err:
        resume_and_finish(checkpoint)
    one_line(str(err.value), expected)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_anywhere_in_a_checkpoint_is_refused_or_trains_on(request, optimizer, data):
    """No damage makes the stage fail later: restore() refuses it or the run trains to its end."""
    saved = request.getfixturevalue("genuine" if optimizer == "sgd" else "genuine_adamw")[0]
    checkpoint = copy.deepcopy(saved)
    where = data.draw(st.sampled_from(sorted(_leaves(checkpoint), key=str)))
    node = checkpoint
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = data.draw(JUNK)
    try:
        net, progress = resume_and_finish(checkpoint, P if optimizer == "sgd" else ADAMW)
    except ResumeError as exc:
        one_line(str(exc))
    else:
        assert progress.epoch == P["epochs"] and progress.best["state_dict"] is not None


# --- params.yaml --------------------------------------------------------------

DAMAGED_PARAMS = {
    "binary garbage": (bytes(range(128, 256)) * 4, "cannot be read as text ('utf-8' codec can't decode byte 0x80"),
    "empty": (b"", "the file is empty"),
    "a YAML list": (b"- data\n- train\n", "expected a mapping of sections (data, train, evaluate, compare) at the "
                                        "top, got ['data', 'train']"),
    "a number": (b"3\n", "at the top, got 3"),
    "broken YAML": (b"train: [1, 2\n", "not valid YAML"),
    "absurdly deep": (b"[" * 1000, "not valid YAML"),  # RecursionError in PyYAML
    "a tab": (b"train:\n\tlr: 1\n", "not valid YAML"),
}


@pytest.mark.parametrize("damage", DAMAGED_PARAMS)
def test_a_damaged_params_file_is_one_line(tmp_path, damage):
    data, expected = DAMAGED_PARAMS[damage]
    path = tmp_path / "params.yaml"
    path.write_bytes(data)
    with pytest.raises(ParamError) as err:
        load_params(path)
    one_line(str(err.value), f"{path}: ", expected)


YAML_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_anywhere_in_params_is_checked_params_or_one_line_per_problem(tmp_path, data):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    where = data.draw(st.sampled_from(sorted(_leaves(params), key=str)))
    node = params
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = data.draw(YAML_JUNK)
    if data.draw(st.booleans()):  # a new key too
        node[data.draw(st.text(max_size=8))] = data.draw(YAML_JUNK)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    try:
        load_params(path)
    except ParamError as exc:
        first, *rest = str(exc).split("\n")
        assert first.startswith(f"{path}"), str(exc)
        assert all(line.startswith("  ") and line.strip() for line in rest), str(exc)
        assert len(rest) == 0 or first.endswith(f"has {len(rest)} problems:"), str(exc)


def test_several_problems_one_line_each(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(lr=-1, epochs=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value).splitlines()[1:] == [
        "  train.epochs: got 0, expected an integer >= 1",
        "  train.lr: got -1.0, expected a finite number > 0 and <= 10"]


# --- writing ------------------------------------------------------------------

def file_size_limit(limit: int):
    """Writes past `limit` bytes fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


def test_a_write_past_the_file_size_limit_keeps_the_previous_file(tmp_path):
    target, folder = tmp_path / "model.pt", tmp_path / "prepared"
    target.write_bytes(b"previous")
    write_folder(folder, {"a.pt": b"a", "b.pt": b"b"})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    file_size_limit(1000)()
    try:
        with pytest.raises(OutputError) as err:
            write_bytes(target, b"x" * 5000)
        with pytest.raises(OutputError) as folder_err:
            write_folder(folder, {"a.pt": b"new", "b.pt": b"x" * 5000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(err.value) == f"{target}: could not write it (File too large); the previous one is unchanged"
    assert str(folder_err.value) == f"{folder / 'b.pt'}: could not write it (File too large); the previous one is unchanged"
    assert target.read_bytes() == b"previous"
    assert (folder / "a.pt").read_bytes() == b"a" and (folder / "b.pt").read_bytes() == b"b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "prepared"]  # no temporary left


# --- the stages, as subprocesses ----------------------------------------------

def stage_cmd(name: str) -> list[str]:
    """The command dvc.yaml runs for stage `name`, with its vars filled in."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    variables = {k: v for block in spec["vars"] for k, v in block.items()}
    cmd = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], spec["stages"][name]["cmd"]).split()
    assert cmd[0] == "python"
    return [sys.executable, *cmd[1:]]


def run_stage(repo, name: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(stage_cmd(name), cwd=repo.path, env=repo.env, capture_output=True, text=True, **kw)


def assert_stopped(proc, *expected: str, code: int = 1) -> str:
    """Exit `code`, one line on stderr that says `expected`, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    one_line(err, *expected)
    return err


def snapshot(repo, *paths: str) -> dict[str, bytes]:
    out = {}
    for path in paths:
        full = repo.path / path
        for file in ([full] if full.is_file() else sorted(p for p in full.rglob("*") if p.is_file())):
            out[str(file.relative_to(repo.path))] = file.read_bytes()
    return out


def no_temporaries(repo) -> list[str]:
    return [str(p) for p in repo.path.rglob("*.tmp") if ".git" not in p.parts and ".dvc" not in p.parts]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A pipeline reproduced once on tiny data; each test puts back what it damages."""
    tmp = tmp_path_factory.mktemp("damage")
    repo = make_repo(tmp / "repo", write_raw(tmp / "raw"))
    repo.dvc("repro")
    repo.commit("reproduced")
    return repo


@pytest.fixture
def pipeline(built):
    keep = {path: (built.path / path).read_bytes() for path in (
        "params.yaml", "models/model.pt", "models/checkpoint.pt", "data/prepared/train.pt",
        "data/prepared/val.pt", "data/prepared/test.pt", "data/raw/train-images-idx3-ubyte")}
    yield built
    for path, data in keep.items():
        target = built.path / path
        if target.is_dir():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


DEFAULT_MODEL = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]["model"]  # what the stages train
STAGE_DAMAGE = [
    # (file, damage, stage that reads it, message)
    ("data/raw/train-images-idx3-ubyte", "truncated", "prepare", "truncated: the header announces"),
    ("data/prepared/train.pt", "truncated", "train", "not a readable torch file, truncated or damaged"),
    ("data/prepared/val.pt", "garbage", "train", "not a torch file (it doesn't start like one)"),
    ("data/prepared/test.pt", "float images", "evaluate", "'images' should be uint8 (N, 28, 28)"),
    ("data/prepared/val.pt", "no images", "train", "no validation images"),
    ("models/model.pt", "truncated", "evaluate", "not a readable torch file, truncated or damaged"),
    ("models/model.pt", "a checkpoint", "evaluate", "this is a training checkpoint, not a model file"),
    ("models/model.pt", "wrong shapes", "evaluate", f"not the weights of a {DEFAULT_MODEL} net: weight 0.weight is"),
    ("params.yaml", "binary garbage", "evaluate", "cannot be read as text"),
    ("params.yaml", "a YAML list", "train", "expected a mapping of sections"),
    ("params.yaml", "nproc beyond the batch", "train", "train.batch_size: got 32, but each of the train.nproc 64"),
]


def damage_file(repo, path: str, damage: str) -> None:
    file = repo.path / path
    data = file.read_bytes()
    if damage == "truncated":
        file.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        file.write_bytes(b"\x80\x02garbage" * 100)
    elif damage == "a list":
        file.write_bytes(torch_bytes([1, 2, 3]))
    elif damage == "float images":
        split = torch.load(file, weights_only=True)
        file.write_bytes(torch_bytes({**split, "images": split["images"].float()}))
    elif damage == "no images":
        split = torch.load(file, weights_only=True)
        file.write_bytes(torch_bytes({"images": split["images"][:0], "labels": split["labels"][:0]}))
    elif damage == "a checkpoint":
        shutil.copy(repo.path / "models/checkpoint.pt", file)
    elif damage == "wrong shapes":
        model = torch.load(file, weights_only=True)
        model["state_dict"]["0.weight"] = torch.zeros(3, 3)
        file.write_bytes(torch_bytes(model))
    elif damage == "binary garbage":
        file.write_bytes(bytes(range(128, 256)))
    elif damage == "a YAML list":
        file.write_text("- data\n- train\n")
    elif damage == "nproc beyond the batch":
        set_params(repo.path, {"train": {"nproc": 64}})
    else:
        raise AssertionError(damage)


@pytest.mark.e2e
@pytest.mark.parametrize("path, damage, stage, expected", STAGE_DAMAGE,
                         ids=[f"{p.split('/')[-1]}-{d}" for p, d, _, _ in STAGE_DAMAGE])
def test_a_stage_reading_a_damaged_file_stops_with_one_line(pipeline, path, damage, stage, expected):
    damage_file(pipeline, path, damage)
    before = snapshot(pipeline, "models", "metrics", "data/prepared")
    err = assert_stopped(run_stage(pipeline, stage), expected)
    assert err.startswith(f"error: {path}: "), err
    assert snapshot(pipeline, "models", "metrics", "data/prepared") == before  # nothing written
    assert no_temporaries(pipeline) == []


RESUME_DAMAGE = {
    "truncated": (lambda c, data: data[:len(data) // 3], "not a readable torch file, truncated or damaged"),
    "garbage": (lambda c, data: b"garbage" * 1000, "not a torch file (it doesn't start like one)"),
    "history damaged": (lambda c, data: torch_bytes({**c, "history": c["history"][:1] + ["x"]}),
                        "is damaged (a row of history is 'x')"),
    "momentum of the wrong shape": (
        lambda c, data: torch_bytes({**c, "optimizer": {**c["optimizer"], "state": {
            **c["optimizer"]["state"], 0: {"momentum_buffer": torch.zeros(2)}}}}),
        "is damaged (optimizer state 'momentum_buffer' doesn't fit its weight)"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("damage", RESUME_DAMAGE)
def test_train_resume_with_a_damaged_checkpoint_says_so_and_starts_afresh(pipeline, damage):
    mutate, expected = RESUME_DAMAGE[damage]
    path = pipeline.path / "models/checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(mutate(torch.load(path, weights_only=True), data))
    set_params(pipeline.path, {"train": {"resume": True}})
    proc = run_stage(pipeline, "train")
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("train.resume:"))
    assert line.startswith("train.resume: models/checkpoint.pt") and expected in line, line
    assert line.endswith("starting afresh"), line
    assert "epoch 1/2" in proc.stdout  # it trained from the start
    load_model(pipeline.path / "models/model.pt")
    assert torch.load(path, weights_only=True)["epoch"] == 2


def drop_file_permission_override():
    """Root writes into read-only folders: drop that power (CAP_DAC_OVERRIDE) for the child."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; PR_CAPBSET_DROP = 24
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


FULL_DISK = [
    # (stage, byte limit, the file that doesn't fit, outputs that must stay as they were)
    ("prepare", 100_000, "data/prepared/train.pt", ("data/prepared",)),
    ("train", 200_000, "models/checkpoint.pt", ("models", "metrics/train.json")),
    ("evaluate", 5_000, "metrics/misclassified.png", ("metrics/misclassified.png", "models")),
]


@pytest.mark.e2e
@pytest.mark.parametrize("stage, limit, path, kept", FULL_DISK, ids=[s for s, *_ in FULL_DISK])
def test_a_full_disk_names_the_file_and_keeps_the_previous_output(pipeline, stage, limit, path, kept):
    before = snapshot(pipeline, *kept)
    proc = run_stage(pipeline, stage, preexec_fn=file_size_limit(limit))
    assert_stopped(proc, f"error: {path}: could not write it (File too large); the previous one is unchanged")
    assert snapshot(pipeline, *kept) == before
    assert no_temporaries(pipeline) == []


@pytest.mark.e2e
def test_a_really_full_disk(pipeline, tmp_path):
    """The prepare stage writing into a small file system that holds the previous output
    but not a second copy of it beside it (needs root, to mount one)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    previous = pipeline.path / "data/prepared"
    size = sum(p.stat().st_size for p in previous.iterdir()) + 100_000
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small file system needs root")
    try:
        shutil.copytree(previous, disk / "prepared")
        before = {p.name: p.read_bytes() for p in (disk / "prepared").iterdir()}
        proc = subprocess.run([*stage_cmd("prepare")[:-1], str(disk / "prepared")], cwd=pipeline.path,
                              env=pipeline.env, capture_output=True, text=True)
        after = {p.name: p.read_bytes() for p in (disk / "prepared").iterdir()}
        left = sorted(p.name for p in disk.iterdir())
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert_stopped(proc, f"error: {disk / 'prepared'}/", "could not write it (No space left on device)")
    assert after == before and left == ["prepared"]


@pytest.mark.e2e
def test_a_read_only_output_folder_names_the_file(pipeline):
    before = snapshot(pipeline, "models")
    (pipeline.path / "models").chmod(0o555)
    try:
        proc = run_stage(pipeline, "train", preexec_fn=drop_file_permission_override)
    finally:
        (pipeline.path / "models").chmod(0o755)
    assert_stopped(proc, "error: models/checkpoint.pt: could not write it (Permission denied); "
                         "the previous one is unchanged")
    assert snapshot(pipeline, "models") == before


# --- SIGTERM ------------------------------------------------------------------

@pytest.fixture
def slow_repo(tmp_path):
    """Four epochs of a few seconds each: time to send a signal after the first one."""
    repo = make_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=600),
                     params={**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 4, "batch_size": 8}})
    repo.dvc("repro", "prepare")
    return repo


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def assert_whole(repo) -> None:
    """Every output there is whole: it loads."""
    if (repo.path / "models/checkpoint.pt").exists():
        assert torch.load(repo.path / "models/checkpoint.pt", weights_only=True)["epoch"] >= 1
    if (repo.path / "models/model.pt").exists():
        load_model(repo.path / "models/model.pt")
    assert no_temporaries(repo) == []


TERMINATED = "terminated (SIGTERM); outputs are written whole or not at all"


@pytest.mark.e2e
def test_sigterm_stops_the_train_stage_like_ctrl_c_and_the_next_repro_completes(slow_repo):
    checkpoint = slow_repo.path / "models/checkpoint.pt"
    # Sent to the stage itself.
    proc = subprocess.Popen(stage_cmd("train"), cwd=slow_repo.path, env=slow_repo.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(checkpoint, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, out, err)
    assert err.strip() == TERMINATED
    assert "saved epoch" not in out and not (slow_repo.path / "models/model.pt").exists()
    assert_whole(slow_repo)

    # Sent to `dvc repro`'s process group, as a CI runner or scheduler cancelling a job
    # does: DVC dies of it (it doesn't pass it on), the stage reports and exits 143.
    checkpoint.unlink()
    dvc = str(Path(sys.executable).parent / "dvc")
    proc = subprocess.Popen([dvc, "repro"], cwd=slow_repo.path, env=slow_repo.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(checkpoint, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and TERMINATED in out and "Traceback" not in out, out
    assert_whole(slow_repo)

    slow_repo.dvc("repro")
    assert_whole(slow_repo)
    assert (slow_repo.path / "models/model.pt").is_file() and (slow_repo.path / "metrics/eval.json").is_file()
