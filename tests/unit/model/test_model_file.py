"""fmnist/model/model_file.py: the model file (models/model.pt): a good one loads, a damaged one
is a DataError in one line naming the file; fuzzed with hypothesis."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmnist.core.dataset import CLASSES
from fmnist.core.errors import DataError
from fmnist.core.io import torch_bytes
from fmnist.model.classifier import Classifier, score
from fmnist.model.model_file import load_model, read_model_bytes
from fmnist.model.nets import build_model
from helpers.damage import one_line, put_junk
from helpers.data import synthetic
from helpers.not_files import NOT_FILES, make_not_file

CPU = torch.device("cpu")


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
    # Found by fuzzing (fuzz/corpus/model/crash-unprintable-class.pkl): the names are printed as they are.
    "a class name a terminal acts on": (torch_bytes(_model(classes=["\x1b[2J", *CLASSES[1:]])),
                                        "'classes' should be a list of 10 class names, found ['\\x1b[2J', "),
    "an empty class name": (torch_bytes(_model(classes=["", *CLASSES[1:]])), "found ['', 'Trouser'"),
    # Found by fuzzing (fuzz/corpus/model/crash-unprintable-weight-name.pkl): a weight's name is quoted printable.
    "a weight named with a bell": (torch_bytes(_weights("\x07" * 500, torch.zeros(1))),
                                   "1 unexpected weights (" + "\\x07" * 60),
    "weights a string": (torch_bytes(_model(state_dict="weights")), "the weights are a str, not a dict of tensors"),
    "a weight missing": (torch_bytes(_model(state_dict={})),
                         "not the weights of a lenet net: 10 weights missing (0.bias, 0.weight, 11.bias, ...)"),
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
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.pt").write_bytes(data)
        return load_model(Path(tmp) / "model.pt")


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_value_anywhere_in_a_model_file_is_refused_or_scores(data):
    """What evaluate does with the model: a DataError, or a net that scores the test set."""
    model = good_model()
    put_junk(data, model)
    try:
        net, _ = load_model_from_bytes(torch_bytes(model))
    except DataError as exc:
        one_line(str(exc), "model.pt: ")
    else:
        x, y = (torch.from_numpy(a) for a in synthetic(8, seed=1))
        result = score(Classifier(net, mirror=True), x, y.long(), device=CPU, batch_size=4)
        assert result.probs.shape == (8, 10) and bool(torch.isfinite(result.probs).all())


@pytest.mark.parametrize("kind", NOT_FILES)
def test_a_model_path_that_is_not_a_file_is_refused_at_once_saying_what_it_is(kind, tmp_path, no_hang):
    """models/model.pt, or what --model names: a named pipe with no writer, a device, a folder..."""
    path = make_not_file(tmp_path / "model.pt", kind)
    with pytest.raises(DataError) as err:
        read_model_bytes(path, "the hint")
    assert str(err.value) == f"{path}: {NOT_FILES[kind]}, not a file; the hint"
    with pytest.raises(DataError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: {NOT_FILES[kind]}, not a file; ")
