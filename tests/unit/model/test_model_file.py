"""fmnist/model/model_file.py: the model file (models/model.pt): a good one loads, a damaged one
is a DataError in one line naming the file; fuzzed with hypothesis."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmnist.core.dataset import CLASSES
from fmnist.core.errors import DataError
from fmnist.core.io import torch_bytes
from fmnist.model import model_file
from fmnist.model.classifier import Classifier, score
from fmnist.model.model_file import (
    MAX_MODEL_BYTES,
    card,
    load_model,
    looks_like_checkpoint,
    model_from_bytes,
    read_model_bytes,
    save_model,
    weights_bytes,
)
from fmnist.model.nets import ARCHITECTURES, build_model
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


# --- saving, the card, the checks' messages, files too large to be a model file (make mutate) ---

def checkpoint(weights: int = 0) -> dict:
    """What fmnist.training.checkpoint writes, with `weights` float32 weights."""
    return {"optimizer": {}, "history": [], "best": {}, "state_dict": {"w": torch.zeros(weights)}}


def refused(data: bytes, tmp_path: Path, name: str = "model.pt") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_model(path)
    one_line(str(err.value), f"{path}: ")
    return str(err.value)


def test_a_saved_model_loads_and_its_card_says_what_it_was_trained_with(tmp_path):
    weights = build_model("lenet").state_dict()
    environment = {"python": "3.11.7", "torch": "2.14.1"}
    path = tmp_path / "model.pt"
    save_model(path, weights, params={"model": "lenet", "lr": 0.1}, epoch=7, val_acc=0.93, data_sha256="ab" * 32,
               environment=environment)
    net, record = load_model(path)
    assert set(record) == {"state_dict", "model", "classes", "params", "epoch", "val_acc", "data_sha256", "environment"}
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())
    assert card(record) == {"architecture": "lenet", "classes": list(CLASSES), "best_epoch": 7, "val_acc": 0.93,
                            "data_sha256": "ab" * 32, "params": {"model": "lenet", "lr": 0.1},
                            "environment": environment}


def test_the_card_of_a_file_of_an_older_version_says_none_of_what_it_lacks():
    record = {"state_dict": {}, "model": "cnn", "classes": tuple(CLASSES)}
    assert card(record) == {"architecture": "cnn", "classes": list(CLASSES), "best_epoch": None, "val_acc": None,
                            "data_sha256": None, "params": None, "environment": None}


@pytest.mark.parametrize("environment, kept", [
    ({f"k{i}": "v" for i in range(16)}, True),
    ({f"k{i}": "v" for i in range(17)}, False),  # at most 16 entries
    ({"k" * 40: "v" * 200}, True),
    ({"k" * 41: "v"}, False),  # keys of at most 40 characters
    ({"k": "v" * 201}, False),  # values of at most 200
    ({"k": "line\nbreak"}, False),  # printable values only
    ({"k": 3}, False),
    ({3: "v"}, False),
    (["python", "3.11"], False),
    ({}, True),
])
def test_the_card_shows_an_environment_record_only_when_it_is_a_few_short_strings(environment, kept):
    shown_environment = card({"model": "cnn", "classes": CLASSES, "environment": environment})["environment"]
    assert shown_environment == (environment if kept else None)


def test_a_model_file_needs_only_its_three_keys():
    net, record = load_model_from_bytes(torch_bytes({"state_dict": build_model("cnn").state_dict(), "model": "cnn",
                                                     "classes": list(CLASSES)}))
    assert record["model"] == "cnn" and not net.training


@pytest.mark.parametrize("data, expected", [
    (torch_bytes({"optimizer": {}, "history": [], "best": {}}), "this is a training checkpoint, not a model file"),
    (torch_bytes(torch.zeros(3)), "expected keys ['classes', 'model', 'state_dict'], found a Tensor);"),
    (torch_bytes({"model": "cnn", "epoch": 3}),
     "expected keys ['classes', 'model', 'state_dict'], found keys ['epoch', 'model']);"),
    (torch_bytes(_model(model="resnet")), f"(known: {', '.join(ARCHITECTURES)});"),
    (torch_bytes(_model(classes=["a", "b", "c"])),
     "'classes' should be a list of 10 class names, found ['a', 'b', 'c'];"),
])
def test_what_a_refused_model_file_was_found_to_be(tmp_path, data, expected):
    one_line(refused(data, tmp_path), expected, "dvc repro --force train")


def test_a_missing_model_file_says_to_run_the_train_stage(tmp_path):
    with pytest.raises(DataError) as err:
        load_model(tmp_path / "model.pt")
    assert str(err.value) == f"{tmp_path / 'model.pt'}: missing; run the train stage first (dvc repro)"


def test_a_checkpoint_too_large_to_be_a_model_file_is_named_a_checkpoint_unread(tmp_path):
    data = torch_bytes(checkpoint(MAX_MODEL_BYTES // 4 + 1000))
    assert len(data) > MAX_MODEL_BYTES
    one_line(refused(data, tmp_path, "checkpoint.pt"), "this is a training checkpoint, not a model file",
             "dvc repro --force train")
    with pytest.raises(DataError) as err:
        model_from_bytes(data, "at v1", "try another revision")
    assert str(err.value) == ("at v1: this is a training checkpoint, not a model file (the train stage writes both); "
                              "try another revision")


def test_a_file_too_large_to_be_a_model_file_that_is_no_checkpoint_is_refused_unread(tmp_path):
    path = tmp_path / "model.pt"
    with path.open("wb") as f:
        f.truncate(MAX_MODEL_BYTES + 1)  # sparse zeros: not a zip archive
    with pytest.raises(DataError) as err:
        read_model_bytes(path, "a hint")
    one_line(str(err.value), f"{path}: ", "larger than a model file of this project can be", "; a hint")
    big = torch_bytes({"state_dict": {"w": torch.zeros(MAX_MODEL_BYTES // 4 + 1000)}, "optimizer": {}})
    one_line(refused(big, tmp_path), "larger than a model file of this project can be", "dvc repro --force train")


def test_records_that_inflate_past_a_model_files_size_are_refused_before_torch_reads_them():
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("archive/data/0", bytes(MAX_MODEL_BYTES + 1))  # zeros: deflated to a few KB
    with pytest.raises(DataError) as err:
        model_from_bytes(archive.getvalue(), "small.pt", "a hint")
    one_line(str(err.value), "small.pt: its records declare", "more than a model file of this project can hold",
             "; a hint")


def test_a_checkpoint_is_known_by_its_pickle_alone_read_to_1_mib():
    assert looks_like_checkpoint(io.BytesIO(torch_bytes({"optimizer": 1, "history": 2, "best": 3})))
    assert not looks_like_checkpoint(io.BytesIO(torch_bytes({"optimizer": 1, "history": 2})))
    assert not looks_like_checkpoint(io.BytesIO(torch_bytes(good_model())))
    long_pickle = {"optimizer": 1, "history": [f"{i:04} " + "x" * 1000 for i in range(1100)], "best": 3}  # 1.1 MB
    assert not looks_like_checkpoint(io.BytesIO(torch_bytes(long_pickle)))
    no_pickle = io.BytesIO()
    with zipfile.ZipFile(no_pickle, "w") as z:
        z.writestr("archive/data/0", b"optimizer history best")
    assert not looks_like_checkpoint(no_pickle)
    assert not looks_like_checkpoint(io.BytesIO(b"garbage" * 10))


def test_weights_bytes_counts_the_bytes_of_an_architectures_weights():
    lenet = sum(t.numel() * t.element_size() for t in build_model("lenet").state_dict().values())
    assert weights_bytes("lenet") == lenet
    assert weights_bytes("cnn6") == 1_156_272


def model_naming_checkpoint_keys() -> dict:
    """A good model file whose params hold the strings a checkpoint's keys are."""
    return {**good_model(), "params": {"optimizer": "sgd", "keep": "best", "log": "history"}}


def test_a_model_file_whose_params_name_a_checkpoints_keys_is_still_a_model_file(tmp_path):
    _, record = load_model_from_bytes(torch_bytes(model_naming_checkpoint_keys()))
    assert record["params"]["keep"] == "best"
    assert model_from_bytes(torch_bytes(model_naming_checkpoint_keys()), "m.pt")[1]["model"] == "lenet"


def test_a_model_file_of_exactly_the_largest_size_is_read(tmp_path, monkeypatch):
    """At the limit (here the file's own size, as a real file can't be sized to the byte: torch aligns its
    records to 64 bytes) a file is still a model file, even one whose strings name a checkpoint's keys."""
    data = torch_bytes(model_naming_checkpoint_keys())
    monkeypatch.setattr(model_file, "MAX_MODEL_BYTES", len(data))
    assert model_from_bytes(data, "m.pt")[1]["model"] == "lenet"
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    assert load_model(path)[1]["model"] == "lenet"
    monkeypatch.setattr(model_file, "MAX_MODEL_BYTES", len(data) - 1)  # a byte less: too large, not read
    with pytest.raises(DataError, match="this is a training checkpoint"):  # what its strings say it is
        load_model(path)
    path.write_bytes(torch_bytes(good_model()))
    monkeypatch.setattr(model_file, "MAX_MODEL_BYTES", path.stat().st_size - 1)
    with pytest.raises(DataError, match="larger than a model file of this project can be"):
        load_model(path)


def test_a_refused_model_files_message_ends_with_the_callers_hint():
    with pytest.raises(DataError) as err:
        model_from_bytes(torch_bytes(_model(model="resnet")), "at v1", "try another revision")
    assert str(err.value).startswith("at v1: unknown architecture 'resnet'")
    assert str(err.value).endswith("; try another revision")


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


@pytest.mark.parametrize("key, value, shown_as", [
    ("epoch", 7, 7),
    ("epoch", "7", None),
    ("epoch", True, None),  # a bool is an int to Python, not an epoch
    ("epoch", 7.0, None),
    ("val_acc", 1, 1.0),
    ("val_acc", True, None),
    ("val_acc", "0.9", None),
    ("data_sha256", "a" * 200, "a" * 200),
    ("data_sha256", "a" * 201, None),  # at most 200 characters
    ("data_sha256", "ab\ncd", None),
    ("data_sha256", 12, None),
    ("params", {f"k{i}": i for i in range(64)}, {f"k{i}": i for i in range(64)}),
    ("params", {f"k{i}": i for i in range(65)}, None),  # at most 64 entries
    ("params", {"lr": 0.1, "augment": {"flip": True, "shift": 0}}, {"lr": 0.1, "augment": {"flip": True, "shift": 0}}),
    ("params", {"lr": 0.1, "augment": {"flip": {"p": 0.5}}}, None),  # groups one level deep, no more
    ("params", {"lr": 0.1, "augment": {"flip": [True]}}, None),
    ("params", {"lr": 0.1, "augment": {f"k{i}": i for i in range(65)}}, None),
    ("params", {"lr": None}, {"lr": None}),
    ("environment", {"python": "3.11.7"}, {"python": "3.11.7"}),
    ("environment", {"python": None}, None),  # the environment is text, and has no groups
    ("environment", {"lock": {"sha256": "ab"}}, None),
])
def test_the_card_shows_what_a_file_holds_only_when_it_is_what_it_should_be(key, value, shown_as):
    assert card({"model": "cnn", "classes": CLASSES, key: value})[{"epoch": "best_epoch"}.get(key, key)] == shown_as


@pytest.mark.parametrize("name, good", [("a", True), ("a" * 100, True), ("a" * 101, False)])
def test_class_names_are_one_to_a_hundred_characters(tmp_path, name, good):
    data = torch_bytes(_model(classes=[name, *CLASSES[1:]]))
    if good:
        assert load_model_from_bytes(data)[1]["classes"][0] == name
    else:
        one_line(refused(data, tmp_path), "'classes' should be a list of 10 class names")
