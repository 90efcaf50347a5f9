"""The model as a product, through DVC: the ONNX export against PyTorch and docs/model.md's
serving snippet; registered versions read back from a fresh clone by `fmnist-predict`.

The pictures and `fmnist-predict` alone are unit-tested in unit/test_images.py and
unit/test_predict.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from fmnist.core.dataset import CLASSES
from fmnist.model.classifier import Classifier
from fmnist.model.nets import build_model
from helpers import ROOT
from helpers.pictures import png, write_pictures
from helpers.repos import Repo, make_repo, run


def predict_command() -> list[str]:
    """The console script where the venv has it (`make test` installs it), else its module."""
    script = Path(sys.executable).parent / "fmnist-predict"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fmnist.serve.predict"]


def serving_snippet() -> str:
    text = (ROOT / "docs/model.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("python") and "onnxruntime" in b]
    assert len(blocks) == 1, "docs/model.md should show one python snippet serving the ONNX model"
    return blocks[0]



def test_the_onnx_export_matches_pytorch_on_the_test_split_and_is_reproducible(tmp_path, tiny_raw):
    import onnxruntime

    repo = make_repo(tmp_path / "repo", tiny_raw)
    assert "Running stage 'export'" in repo.dvc("repro").stdout
    onnx_bytes = (repo.path / "models/model.onnx").read_bytes()
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    [given], [answer] = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, given.shape[1:]) == ("pixels", "tensor(uint8)", [1, 28, 28])
    assert (answer.name, answer.type, answer.shape[1:]) == ("probabilities", "tensor(float)", [10])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == list(CLASSES) and meta["mirror_averaged"] == "true"

    test = torch.load(repo.path / "data/prepared/test.pt", weights_only=True)
    pixels = test["images"].unsqueeze(1)
    model = torch.load(repo.path / "models/model.pt", weights_only=True)
    net = build_model(model["model"])
    model_bytes = (repo.path / "models/model.pt").read_bytes()
    assert meta["source_md5"] == hashlib.md5(model_bytes, usedforsecurity=False).hexdigest()
    net.load_state_dict(model["state_dict"])
    with torch.no_grad():
        expected = Classifier(net, mirror=True)(pixels).numpy()
    got = np.concatenate([session.run(None, {"pixels": pixels[i:i + 7].numpy()})[0]  # any batch size
                          for i in range(0, len(pixels), 7)])
    assert got.shape == expected.shape == (len(pixels), 10)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-4

    # The same model gives the same bytes: dvc.lock's hash holds run after run, and in any
    # checkout (no paths of this one, which the exporter's debugging notes would hold).
    assert str(repo.path).encode() not in onnx_bytes and b"stack_trace" not in onnx_bytes
    repo.dvc("repro", "--force", "--single-item", "export")
    assert (repo.path / "models/model.onnx").read_bytes() == onnx_bytes
    assert repo.dvc("status", "--json").stdout.strip() == "{}"

    # The docs' serving snippet works as printed, on a stored test image.
    (repo.path / "pics").mkdir()
    (repo.path / "pics/boot.png").write_bytes(png(test["images"][0]))
    proc = repo.run(sys.executable, "-c", serving_snippet())
    assert proc.stdout.startswith(CLASSES[int(expected[0].argmax())] + " "), proc.stdout


def test_a_registered_version_is_read_back_from_a_fresh_clone(tmp_path, tiny_raw):
    repo = make_repo(tmp_path / "repo", tiny_raw)
    repo.dvc("repro")
    repo.commit("results")
    repo.run(str(Path(sys.executable).parent / "gto"), "register", "fashion-classifier", "--version", "v1.0.0")
    tag = repo.run("git", "for-each-ref", "--format=%(objecttype) %(refname:short)", "refs/tags").stdout.split()
    assert tag == ["tag", "fashion-classifier@v1.0.0"]  # annotated, in GTO's format
    released = repo.run("git", "rev-parse", "HEAD").stdout.strip()
    repo.dvc("push")

    run(["git", "clone", "-q", str(repo.path), str(tmp_path / "clone")], cwd=tmp_path, env=repo.env)
    clone = Repo(tmp_path / "clone", {**repo.env, "PYTHONPATH": str(tmp_path / "clone")})
    assert not (clone.path / "models/model.pt").exists()
    # The version's model bytes, as another project gets them (from the default remote).
    clone.dvc("artifacts", "get", str(clone.path), "fashion-classifier", "--rev", "v1.0.0", "-o", "v1.pt")
    assert (clone.path / "v1.pt").read_bytes() == (repo.path / "models/model.pt").read_bytes()
    truth = write_pictures(tmp_path / "pics", n=2)
    proc = clone.run(*predict_command(), "--rev", "fashion-classifier@v1.0.0", "--json", *map(str, truth))
    rows = json.loads(proc.stdout)
    assert {row["path"]: row["class"] for row in rows} == {str(p): c for p, c in truth.items()}

    info = json.loads(clone.run(*predict_command(), "--rev", "fashion-classifier@v1.0.0", "--info", "--json").stdout)
    assert info["commit"] == released and info["best_epoch"] in (1, 2)

    for rev, message in (("fashion-classifier@v9.9.9", "Unable to find artifact"),
                         ("no-such-branch", "no such commit, branch or tag"),
                         ("HEAD~1", "records no such output")):
        proc = clone.run(*predict_command(), "--rev", rev, str(next(iter(truth))), check=False)
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
