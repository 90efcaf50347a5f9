"""fmnist/serve/predict.py: `fmnist-predict` names the garment in pictures of every kind, prints
the model card, and costs one line per unreadable picture or model.

Through DVC, with registered versions: e2e/test_product.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from fmnist.core import errors
from fmnist.core.dataset import CLASSES
from fmnist.serve.predict import cli
from helpers import ROOT
from helpers.data import synthetic
from helpers.not_files import NOT_FILES, make_not_file
from helpers.pictures import png, write_pictures


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
    assert all(line.split()[0] == str(path) for line, path in zip(table[1:], truth, strict=True))


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


def exit_code_of_run(argv: list[str]) -> int:
    """fmnist-predict's exit code as its console script gives it (errors.run: one line, exit 1),
    with the SIGTERM handler run() installs put back afterwards."""
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as exit:
            errors.run(lambda: cli(argv))
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    return exit.value.code


def test_a_damaged_or_missing_model_is_one_line_and_exit_1(model_file, tmp_path, capsys):
    picture = tmp_path / "p.png"
    picture.write_bytes(png(torch.from_numpy(synthetic(1, 0)[0][0])))
    damaged = tmp_path / "model.pt"
    damaged.write_bytes(model_file.read_bytes()[:5000])
    for model, message in ((damaged, "not a readable torch file"), (tmp_path / "none.pt", "missing")):
        code = exit_code_of_run(["--model", str(model), str(picture)])
        out, err = capsys.readouterr()
        assert code == 1 and out == ""
        assert err.count("\n") == 1 and err.startswith(f"error: {model}: {message}"), err


def test_outside_the_project_the_missing_model_line_says_where_it_looked(tmp_path, monkeypatch, capsys):
    picture = tmp_path / "p.png"
    picture.write_bytes(png(torch.from_numpy(synthetic(1, 0)[0][0])))
    monkeypatch.chdir(tmp_path)
    code = exit_code_of_run([str(picture)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: models/model.pt: missing; looked for it in {tmp_path}, the current folder: "
                          f"run the command in the project's folder"), err


def test_info_prints_the_model_card(model_file, capsys):
    assert cli(["--info", "--model", str(model_file)]) == 0
    card = capsys.readouterr().out
    lock = ROOT / "requirements/runtime-versions.txt"
    environment = (f"environment   python {platform.python_version()}, torch {version('torch')}, "
                   f"{sys.platform}-{platform.machine().lower()}, lock {lock.as_posix()} "
                   f"sha256 {hashlib.sha256(lock.read_bytes()).hexdigest()}")
    for text in ("architecture  cnn", "best epoch    3 of 3", "val accuracy  0.9500", "data sha256   " + "ab" * 32,
                 "Ankle boot", "commit        - (not committed yet", environment,
                 "params        model=cnn epochs=3 batch_size=32 ", " augment.flip=True augment.shift=0 "):
        assert text in card, card
    assert cli(["--info", "--json", "--model", str(model_file)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == list(CLASSES) and info["best_epoch"] == 3 and info["commit"] is None
    assert info["environment"]["torch"] == version("torch") and len(info["environment"]["lock_sha256"]) == 64
    assert info["params"]["epochs"] == 3 and info["params"]["augment"]["flip"] is True


@pytest.mark.parametrize("environment", [None, {"python": 3.11}, {"python": "x" * 500}, {"torch": "2\x1b[2J"}, "3.11"])
def test_a_card_without_a_proper_environment_record_says_unknown(model_file, tmp_path, capsys, environment):
    """An older model file has none; a file from elsewhere may hold anything: the card prints none of it."""
    record = torch.load(model_file, weights_only=True)
    if environment is None:
        del record["environment"]
    else:
        record["environment"] = environment
    path = tmp_path / "model.pt"
    torch.save(record, path)
    assert cli(["--info", "--model", str(path)]) == 0
    assert "environment   unknown (a model file older than the record)" in capsys.readouterr().out


@pytest.mark.parametrize("damage", [{"params": ["lenet", 2]}, {"params": "lenet"}, {"params": {"lr": torch.zeros(2)}},
                                    {"params": {("a", "b"): 1}}, {"epoch": torch.zeros(2)}, {"val_acc": "0.9"},
                                    {"data_sha256": "ab\nc\x1b[2J"}, {"data_sha256": 7}])
def test_a_card_of_a_file_from_elsewhere_prints_what_it_can_and_unknown_for_the_rest(model_file, tmp_path, capsys,
                                                                                   damage):
    """Found by fuzzing (fuzz/corpus/model/damaged-params.pkl): a model file whose params weren't a
    dict stopped `--info` with an AttributeError, and a tensor anywhere in the card stopped `--info --json`."""
    record = torch.load(model_file, weights_only=True)
    record.update(damage)
    path = tmp_path / "model.pt"
    torch.save(record, path)
    assert cli(["--info", "--model", str(path)]) == 0
    card = capsys.readouterr().out
    assert card.count("\n") == 9 and card.replace("\n", "").isprintable(), card
    assert cli(["--info", "--json", "--model", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    key = next(iter(damage))
    assert info[{"epoch": "best_epoch"}.get(key, key)] is None


def test_fmnist_predict_is_a_console_script():
    """Installed as one by `pip install -e .` (make repro, make test), from pyproject.toml."""
    from importlib.metadata import entry_points

    scripts = list(entry_points(group="console_scripts", name="fmnist-predict"))
    assert [s.value for s in scripts] == ["fmnist.serve.predict:main"]
    if sys.prefix != sys.base_prefix:  # in a virtualenv (make test's .venv): the command is there
        assert (Path(sys.executable).parent / "fmnist-predict").is_file()


def test_piped_into_head_it_ends_quietly(model_file, tmp_path):
    """`fmnist-predict --json *.png | head -n 2`: two lines, nothing on stderr, exit 141 (SIGPIPE's, as
    `yes | head` gives), however much was left unwritten."""
    (tmp_path / "pics").mkdir()
    for i in range(600):  # a JSON array of some 200 KB: more than a pipe holds, so the writes meet a closed pipe
        (tmp_path / "pics" / f"{i:03}.png").write_bytes(png(torch.full((28, 28), i % 256, dtype=torch.uint8)))
    script = (f'"{sys.executable}" -m fmnist.serve.predict --json --model "{model_file}" pics/*.png 2>err | head -n 2; '
              'echo "${PIPESTATUS[0]}" >status')
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300).stdout
    assert len(out.splitlines()) == 2 and out.startswith("["), out
    assert (tmp_path / "err").read_text() == ""
    assert (tmp_path / "status").read_text().strip() == str(128 + signal.SIGPIPE)


def test_what_is_not_a_picture_file_costs_one_line_at_once_and_the_pictures_beside_it_are_classified(
        model_file, tmp_path, capsys, no_hang):
    """A named pipe nobody writes to used to hang the command before the pictures after it were read."""
    truth = write_pictures(tmp_path / "pics", n=1)
    odd = [make_not_file(tmp_path / "odd" / f"{kind}.png", kind) for kind in NOT_FILES]
    files = [*map(str, odd[:3]), *map(str, truth), *map(str, odd[3:])]
    assert cli(["--model", str(model_file), "--json", *files]) == 1
    out, err = capsys.readouterr()
    assert [row["path"] for row in json.loads(out)] == [str(p) for p in truth]
    assert err.splitlines() == [
        *(f"error: {path}: {NOT_FILES[kind]}, not a file; expected a PNG, JPEG, WebP, GIF, BMP or TIFF picture"
          for path, kind in zip(odd, NOT_FILES, strict=True)),
        f"error: {len(odd)} of {len(files)} picture(s) could not be read"]


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_model_that_is_not_a_file_is_one_line_and_exit_1(kind, model_file, tmp_path, capsys, no_hang):
    picture = tmp_path / "p.png"
    picture.write_bytes(png(torch.from_numpy(synthetic(1, 0)[0][0])))
    model = make_not_file(tmp_path / "model.pt", kind)
    code = exit_code_of_run(["--model", str(model), str(picture)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err == (f"error: {model}: {NOT_FILES[kind]}, not a file; expected a model file of this project "
                   f"(models/model.pt)\n")


def test_dash_classifies_one_picture_from_standard_input_as_its_file(model_file, tmp_path, capsys, monkeypatch):
    """`cat shirt.png | fmnist-predict -`, and `<(...)` beside it: what the files themselves give."""
    truth = write_pictures(tmp_path / "pics", n=1)
    first, second = list(truth)[:2]
    assert cli(["--json", "--model", str(model_file), str(first), str(second)]) == 0
    by_file = json.loads(capsys.readouterr().out)
    command = [sys.executable, "-m", "fmnist.serve.predict", "--json", "--model", str(model_file)]
    script = f'cat "{first}" | {shlex.join(command)} - <(cat "{second}")'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    rows = json.loads(proc.stdout)
    assert rows[0]["path"] == "-" and rows[1]["path"].startswith("/dev/fd/")
    assert [{**row, "path": None} for row in rows] == [{**row, "path": None} for row in by_file]

    with open(os.devnull, "rb") as null:
        monkeypatch.setattr(sys, "stdin", null)
        assert cli(["--model", str(model_file), "-", str(first)]) == 1
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["file", str(first)]
    null_is = "a character device (/dev/null)" if sys.platform == "linux" else "a character device"
    assert err.splitlines() == [
        f"error: -: standard input is {null_is}, not a file; expected a PNG, JPEG, WebP, GIF, BMP or TIFF picture",
        "error: 1 of 2 picture(s) could not be read"]
