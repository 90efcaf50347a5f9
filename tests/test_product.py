"""The model as a product: pictures in (fmnist/images.py), `fmnist-predict`, the ONNX
export, registered versions read back through DVC.

Pictures are made from the tiny generated images of conftest.synthetic(): as stored
(light on dark), inverted (dark on light, as a photo on paper), enlarged onto a larger
canvas, and in colour; as PNG, JPEG and WebP.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import encode_jpeg, encode_png

from helpers import ROOT, Repo, make_repo, run, synthetic, write_raw
from fmnist import errors
from fmnist.classifier import Classifier, score
from fmnist.dataset import CLASSES
from fmnist.device import to_device_layout
from fmnist.errors import DataError
from fmnist.images import decode, is_dark_on_light, to_fashion_mnist
from fmnist.io import save_torch
from fmnist.model import build_model
from fmnist.predict import cli
from fmnist.training import Settings, TrainState, seed_everything, train_epoch

CPU = torch.device("cpu")
VARIANTS = ("stored", "inverted", "enlarged", "colour")


# --- pictures -----------------------------------------------------------------

def png(pixels: torch.Tensor) -> bytes:
    """uint8 (H, W) grey or (3, H, W) colour as PNG bytes."""
    return encode_png(pixels if pixels.ndim == 3 else pixels[None]).numpy().tobytes()


def webp(pixels: torch.Tensor) -> bytes:
    buffer = io.BytesIO()  # torchvision has no WebP encoder; Pillow has
    Image.fromarray(pixels.numpy()).save(buffer, format="WEBP", quality=90)
    return buffer.getvalue()


def jpeg(pixels: torch.Tensor) -> bytes:
    return encode_jpeg(pixels if pixels.ndim == 3 else pixels[None], quality=95).numpy().tobytes()


def enlarge(image: torch.Tensor, factor: int = 5, size: tuple[int, int] = (150, 200)) -> torch.Tensor:
    """`image` scaled up `factor` times and centred on a dark (H, W) = `size` canvas."""
    big = image.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    canvas = torch.zeros(size, dtype=torch.uint8)
    top, left = (size[0] - big.shape[0]) // 2, (size[1] - big.shape[1]) // 2
    canvas[top:top + big.shape[0], left:left + big.shape[1]] = big
    return canvas


def colour(image: torch.Tensor) -> torch.Tensor:
    """A tinted RGB version of a grey image (3, H, W)."""
    return torch.stack([image, (image * 0.9).to(torch.uint8), (image * 0.7).to(torch.uint8)])


def write_pictures(folder: Path, n: int = 4, seed: int = 7) -> dict[Path, str]:
    """n generated garments, each in the four variants; {path: true class name}."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic(n, seed)
    truth = {}
    for i, (image, label) in enumerate(zip(torch.from_numpy(images), labels)):
        pictures = {
            f"{i}-stored.png": png(image),
            f"{i}-inverted.webp": webp(255 - image),
            f"{i}-enlarged.jpg": jpeg(enlarge(image)),
            f"{i}-colour.png": png(colour(image)),
        }
        for name, data in pictures.items():
            (folder / name).write_bytes(data)
            truth[folder / name] = CLASSES[label]
    return truth


def test_stored_pictures_decode_to_their_pixels_and_negatives_are_negated():
    images, _ = synthetic(3, 0)
    for image in torch.from_numpy(images):
        assert torch.equal(decode(png(image), "stored.png"), image)
        # Equal channels: the grey conversion's weights add up to 1, give or take rounding.
        assert (decode(png(image.expand(3, -1, -1).contiguous()), "grey.png").int() - image.int()).abs().max() <= 1
        assert not is_dark_on_light(image) and is_dark_on_light(255 - image)
        # A photo on paper ends up as the stored picture would: light on dark.
        assert torch.equal(to_fashion_mnist(255 - image), to_fashion_mnist(image))
        # One of the data set's own images (a black ground) comes back exactly, either way round.
        clean = torch.where(image < 60, 0, image).to(torch.uint8)
        assert torch.equal(to_fashion_mnist(clean), clean) and torch.equal(to_fashion_mnist(255 - clean), clean)
        lossy = to_fashion_mnist(decode(webp(255 - image), "inverted.webp"))
        assert (lossy.float() - to_fashion_mnist(image).float()).abs().mean() < 8


def test_a_garment_is_trimmed_and_fitted_into_28x28_keeping_its_aspect_ratio():
    for height, width, ground, garment in ((100, 50, 0, 200), (40, 120, 230, 20)):
        picture = torch.full((150, 200), ground, dtype=torch.uint8)
        picture[30:30 + height, 60:60 + width] = garment
        fitted = to_fashion_mnist(picture)
        assert fitted.shape == (28, 28) and fitted.dtype == torch.uint8
        lit = (fitted > 127).nonzero()
        rows, cols = lit[:, 0].max() - lit[:, 0].min() + 1, lit[:, 1].max() - lit[:, 1].min() + 1
        assert max(rows, cols) == 28
        assert abs(float(rows) / float(cols) - height / width) < 0.1, (rows, cols)
        assert fitted[lit[:, 0], lit[:, 1]].min() >= 200  # the garment is light, whatever its ground
        assert fitted.float().mean() < 255 / 2  # ... and the ground is dark


def test_transparency_lies_on_white_and_a_blank_picture_is_all_ground():
    rgba = torch.zeros(4, 60, 40, dtype=torch.uint8)  # transparent black ...
    rgba[:, 10:50, 10:30] = torch.tensor([40, 40, 40, 255], dtype=torch.uint8).view(4, 1, 1)  # ... round a dark garment
    buffer = io.BytesIO()  # torchvision's PNG encoder has no alpha channel; Pillow's has
    Image.fromarray(rgba.permute(1, 2, 0).numpy(), mode="RGBA").save(buffer, format="PNG")
    fitted = to_fashion_mnist(decode(buffer.getvalue(), "cutout.png"))
    assert fitted[14, 14] > 200 and fitted[0, 0] == 0
    assert torch.equal(to_fashion_mnist(torch.full((30, 30), 180, dtype=torch.uint8)), torch.zeros(28, 28, dtype=torch.uint8))


@pytest.mark.parametrize("data, message", [
    (b"", "the file is empty"),
    (b"GIF89a... not really", "not a readable PNG, JPEG, WebP, GIF, BMP or TIFF picture"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a readable PNG, JPEG, WebP, GIF, BMP or TIFF picture"),
])
def test_bad_pictures_are_a_data_error_naming_the_file(data, message):
    with pytest.raises(DataError, match=message) as error:
        decode(data, "pics/bad.png")
    assert str(error.value).startswith("pics/bad.png: ") and "\n" not in str(error.value)


def test_truncated_pictures_are_a_data_error():
    image = torch.from_numpy(synthetic(1, 0)[0][0])
    for data in (png(image), jpeg(image), webp(image)):
        with pytest.raises(DataError, match="not a readable"):
            decode(data[:len(data) // 2], "half")


# --- a tiny trained model -------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A cnn trained for a few epochs on generated images, saved as the train stage saves it."""
    seed_everything(0)
    net = build_model("cnn")
    x, y = (torch.from_numpy(a) for a in synthetic(400, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    state = TrainState(net, to_device_layout(net, CPU), opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0), None)
    settings = Settings(epochs=3, batch_size=32, seed=0, augment=True, shift=0, erase=0.0, label_smoothing=0.1,
                        device=CPU, dtype=None, progress_bar=False)
    for epoch in (1, 2, 3):
        train_epoch(state, x, y.long(), epoch, settings)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_torch(path, {"state_dict": net.state_dict(), "model": "cnn", "classes": list(CLASSES),
                      "params": {"model": "cnn", "epochs": 3}, "epoch": 3, "val_acc": 0.95, "data_sha256": "ab" * 32})
    return path


@pytest.mark.parametrize("mirror", [True, False])
def test_scoring_in_batches_gives_what_the_classifier_gives_at_once(model_file, mirror):
    net = build_model("cnn")
    net.load_state_dict(torch.load(model_file, weights_only=True)["state_dict"])
    images, labels = (torch.from_numpy(a) for a in synthetic(100, 3))
    scored = score(Classifier(net, mirror=mirror), images, labels.long(), device=CPU, batch_size=32)
    with torch.no_grad():
        probs = Classifier(net, mirror=mirror)(images.unsqueeze(1))
    assert torch.allclose(probs, scored.probs, atol=1e-6)


def test_predict_names_the_garment_in_every_kind_of_picture(model_file, tmp_path, capsys):
    truth = write_pictures(tmp_path / "pics")
    assert cli(["--model", str(model_file), "--json", "--top", "2", *map(str, truth)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in rows] == [str(p) for p in truth]
    for row in rows:
        assert set(row) == {"path", "class", "probability", "top"}
        assert len(row["top"]) == 2 and row["top"][0] == {"class": row["class"], "probability": row["probability"]}
        assert row["top"][0]["probability"] >= row["top"][1]["probability"]
    wrong = {row["path"]: row["class"] for row in rows if row["class"] != truth[Path(row["path"])]}
    assert wrong == {}, wrong

    assert cli(["--model", str(model_file), *map(str, truth)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["file", "class", "probability", "top"] and len(table) == 1 + len(truth)
    assert all(line.split()[0] == str(path) for line, path in zip(table[1:], truth))


def test_unreadable_pictures_cost_one_line_each_and_the_rest_are_classified(model_file, tmp_path, capsys):
    truth = write_pictures(tmp_path / "pics", n=1)
    (tmp_path / "pics" / "notes.png").write_text("not a picture")
    missing = tmp_path / "pics" / "missing.jpg"
    files = [str(missing), *map(str, truth), str(tmp_path / "pics" / "notes.png")]
    assert cli(["--model", str(model_file), "--json", *files]) == 1
    out, err = capsys.readouterr()
    assert [row["path"] for row in json.loads(out)] == [str(p) for p in truth]
    lines = err.splitlines()
    assert len(lines) == 3, err
    assert lines[0].startswith(f"error: {missing}: missing") and "notes.png: not a readable" in lines[1]
    assert lines[2] == "error: 2 of 6 picture(s) could not be read"


def test_a_damaged_or_missing_model_is_one_line_and_exit_1(model_file, tmp_path, capsys):
    picture = tmp_path / "p.png"
    picture.write_bytes(png(torch.from_numpy(synthetic(1, 0)[0][0])))
    damaged = tmp_path / "model.pt"
    damaged.write_bytes(model_file.read_bytes()[:5000])
    sigterm = signal.getsignal(signal.SIGTERM)  # run() installs its own handler
    try:
        for model, message in ((damaged, "not a readable torch file"), (tmp_path / "none.pt", "missing")):
            with pytest.raises(SystemExit) as exit:
                errors.run(lambda: cli(["--model", str(model), str(picture)]))
            out, err = capsys.readouterr()
            assert exit.value.code == 1 and out == ""
            assert err.count("\n") == 1 and err.startswith(f"error: {model}: {message}"), err
    finally:
        signal.signal(signal.SIGTERM, sigterm)


def test_info_prints_the_model_card(model_file, capsys):
    assert cli(["--info", "--model", str(model_file)]) == 0
    card = capsys.readouterr().out
    for text in ("architecture  cnn", "best epoch    3 of 3", "val accuracy  0.9500", "data sha256   " + "ab" * 32,
                 "Ankle boot", "commit        - (not committed yet"):
        assert text in card, card
    assert cli(["--info", "--json", "--model", str(model_file)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == list(CLASSES) and info["best_epoch"] == 3 and info["commit"] is None


def test_fmnist_predict_is_a_console_script():
    """Installed as one by `pip install -e .` (make repro, make test), from pyproject.toml."""
    from importlib.metadata import entry_points

    scripts = list(entry_points(group="console_scripts", name="fmnist-predict"))
    assert [s.value for s in scripts] == ["fmnist.predict:main"]
    if sys.prefix != sys.base_prefix:  # in a virtualenv (make test's .venv): the command is there
        assert (Path(sys.executable).parent / "fmnist-predict").is_file()


# --- through DVC: the export stage, registered versions ------------------------------

def predict_command() -> list[str]:
    """The console script where the venv has it (`make test` installs it), else its module."""
    script = Path(sys.executable).parent / "fmnist-predict"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fmnist.predict"]


def readme_serving_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in text.split("```")[1::2] if b.startswith("python") and "onnxruntime" in b]
    assert len(blocks) == 1, "README.md should show one python snippet serving the ONNX model"
    return blocks[0]


@pytest.mark.e2e
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
    assert meta["source_md5"] == hashlib.md5((repo.path / "models/model.pt").read_bytes()).hexdigest()
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

    # The README's serving snippet works as printed, on a stored test image.
    (repo.path / "pics").mkdir()
    (repo.path / "pics/boot.png").write_bytes(png(test["images"][0]))
    proc = repo.run(sys.executable, "-c", readme_serving_snippet())
    assert proc.stdout.startswith(CLASSES[int(expected[0].argmax())] + " "), proc.stdout


@pytest.mark.e2e
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
