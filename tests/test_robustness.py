"""Bad input, interruption, resume and reproducibility, through the real pipeline on tiny data."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import make_repo, set_params, write_raw
from fmnist.errors import DataError
from fmnist.raw import download


def lock_hashes(repo) -> dict[str, str]:
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_clean_failure(proc, *expected: str) -> None:
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def no_partial_files(repo) -> list[str]:
    return [str(p) for p in repo.path.rglob("*.tmp") if ".git" not in p.parts and ".dvc" not in p.parts]


# --- params -----------------------------------------------------------------

@pytest.mark.e2e
def test_bad_params_stop_before_work_and_lose_nothing(repo):
    repo.dvc("repro")
    repo.commit("good run")
    lock_before = (repo.path / "dvc.lock").read_bytes()
    model_before = file_md5(repo.path / "models/model.pt")

    set_params(repo.path, {"train": {"lr": -0.1, "epoch": 3}})
    proc = repo.dvc("repro", check=False)
    assert_clean_failure(proc, "train.lr: got -0.1, expected a finite number > 0",
                         "train.epoch: unknown key (did you mean 'epochs'?)")
    assert (repo.path / "dvc.lock").read_bytes() == lock_before

    repo.run("git", "checkout", "params.yaml")
    repo.dvc("checkout")
    assert file_md5(repo.path / "models/model.pt") == model_before
    assert repo.dvc("status", "--json").stdout.strip() == "{}"


@pytest.mark.e2e
def test_an_override_of_an_unknown_key_is_refused(repo):
    proc = repo.dvc("exp", "run", "-S", "train.epoch=3", check=False)
    assert proc.returncode != 0 and "train.epoch" in proc.stdout + proc.stderr


@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_device_is_a_clear_error(repo):
    set_params(repo.path, {"train": {"device": "cuda"}})
    proc = repo.dvc("repro", check=False)
    assert_clean_failure(proc, "train.device: cuda was asked for but this machine has no cuda device")
    assert not (repo.path / "models/model.pt").exists()


@pytest.mark.e2e
def test_diverging_training_names_epoch_and_batch_and_writes_no_model(repo):
    set_params(repo.path, {"train": {"lr": 10.0, "label_smoothing": 0.0, "weight_decay": 0.0}})
    proc = repo.dvc("repro", check=False)
    assert_clean_failure(proc, "training diverged: the loss became", "at epoch 1, batch")
    assert not (repo.path / "models/model.pt").exists()
    assert not (repo.path / "metrics/train.json").exists()


# --- raw data ---------------------------------------------------------------

def _corrupt(folder: Path, name: str, data: bytes) -> None:
    (folder / f"{name}.gz").unlink()
    (folder / name).write_bytes(data)


@pytest.mark.parametrize("name, data, message", [
    ("train-images-idx3-ubyte", b"", "train-images-idx3-ubyte: the file is empty"),
    ("train-images-idx3-ubyte", b"\x1f\x8b\x08\x00garbage", "train-images-idx3-ubyte: not a readable gzip file"),
    ("t10k-labels-idx1-ubyte", (2051).to_bytes(4, "big") + b"\0" * 8, "t10k-labels-idx1-ubyte: wrong magic number 2051"),
    ("t10k-images-idx3-ubyte", (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (120, 28, 28)) + b"\0" * 100,
     "t10k-images-idx3-ubyte: truncated"),
    ("t10k-images-idx3-ubyte", (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (1, 32, 32)) + b"\0" * 1024,
     "images are 32x32, expected 28x28"),
    ("t10k-labels-idx1-ubyte", (2049).to_bytes(4, "big") + (119).to_bytes(4, "big") + b"\0" * 119,
     "holds 120 images but"),
    ("t10k-labels-idx1-ubyte", (2049).to_bytes(4, "big") + (120).to_bytes(4, "big") + b"\x0b" * 120,
     "t10k-labels-idx1-ubyte: label 11 at position 0, expected 0-9"),
])
@pytest.mark.e2e
def test_bad_raw_files_are_named_and_nothing_is_written(repo, tiny_raw, name, data, message):
    _corrupt(tiny_raw, name, data)
    proc = repo.dvc("repro", check=False)
    assert_clean_failure(proc, message)
    assert not (repo.path / "data/raw").exists()
    assert not list((repo.path / ".dvc").glob("cache/files/md5/*/*"))


@pytest.mark.e2e
def test_missing_file_and_missing_folder(repo, tiny_raw):
    (tiny_raw / "train-labels-idx1-ubyte.gz").unlink()
    assert_clean_failure(repo.dvc("repro", check=False), "train-labels-idx1-ubyte: missing")
    repo.env["FASHION_MNIST_DIR"] = str(tiny_raw / "nowhere")
    assert_clean_failure(repo.dvc("repro", check=False), "nowhere: no such folder")


@pytest.mark.e2e
def test_plain_uncompressed_files_work_too(tmp_path):
    repo = make_repo(tmp_path / "repo", write_raw(tmp_path / "plain", gz=False))
    repo.dvc("repro", "download")
    assert (repo.path / "data/raw/train-images-idx3-ubyte").is_file()


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def mirror(tiny_raw):
    """A local HTTP server on 127.0.0.1 serving the tiny gzipped files."""
    handler = lambda *a, **kw: _Files(*a, directory=str(tiny_raw), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_checks_md5_and_falls_back_to_the_next_mirror(mirror, tiny_raw, tmp_path):
    name = "train-labels-idx1-ubyte"
    good = {f"{name}.gz": file_md5(tiny_raw / f"{name}.gz")}
    dead = "http://127.0.0.1:9/"  # nothing listens on the discard port
    data = download(name, tmp_path, [dead, mirror], good)
    assert gzip.decompress(data)[:4] == (2049).to_bytes(4, "big")

    with pytest.raises(DataError) as err:
        download(name, tmp_path, [mirror], {f"{name}.gz": "0" * 32})
    assert f"could not download {name}.gz" in str(err.value) and "MD5" in str(err.value)
    assert "FASHION_MNIST_DIR" in str(err.value)

    with pytest.raises(DataError) as err:
        download(name, tmp_path, [dead], good)
    assert f"{dead}{name}.gz" in str(err.value) and "FASHION_MNIST_DIR" in str(err.value)


# --- interruption, resume, reproducibility ----------------------------------

SLOW = {"train": {"epochs": 6, "batch_size": 16}}


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays
    # ignored across exec: give `dvc repro` (and so the stage) Ctrl-C as a terminal has it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(repo) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo.path, env=repo.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)


@pytest.fixture
def slow_repo(tmp_path):
    return make_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=1600))


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_training_leaves_no_model_and_the_next_repro_completes(slow_repo, sig):
    """Ctrl-C (SIGINT to the process group) or SIGKILL; the next repro is checked after
    SIGKILL, the harsher of the two (Ctrl-C's outputs are checked the same way)."""
    set_params(slow_repo.path, SLOW)
    proc = _start(slow_repo)
    _wait_for(slow_repo.path / "metrics/train.json", proc)  # written after the checkpoint
    os.killpg(proc.pid, sig)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0, output
    assert not (slow_repo.path / "models/model.pt").exists()
    # Per-epoch logs show the epochs the killed run did; they are whole files.
    assert json.loads((slow_repo.path / "metrics/train.json").read_text())["epoch"] < 6
    assert no_partial_files(slow_repo) == []
    if sig == signal.SIGINT:
        return
    slow_repo.dvc("repro")
    assert (slow_repo.path / "models/model.pt").is_file()
    assert no_partial_files(slow_repo) == []


@pytest.mark.e2e
def test_resume_continues_and_ends_with_the_uninterrupted_weights(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=1600)
    straight = make_repo(tmp_path / "straight", raw, params={**SLOW, "data": {"val_size": 60}})
    straight.dvc("repro")
    expected = torch.load(straight.path / "models/model.pt", weights_only=True)

    resumed = make_repo(tmp_path / "resumed", raw, params={**SLOW, "data": {"val_size": 60}})
    set_params(resumed.path, {"train": {"resume": True}})
    proc = _start(resumed)
    _wait_for(resumed.path / "models/checkpoint.pt", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (resumed.path / "models/model.pt").exists()
    out = resumed.dvc("repro").stdout
    assert "resuming after epoch" in out
    got = torch.load(resumed.path / "models/model.pt", weights_only=True)
    assert got["epoch"] == expected["epoch"]
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    for path in ("metrics/train.json", "metrics/train/metrics.json", "metrics/train/plots/metrics/val/acc.tsv"):
        assert (resumed.path / path).read_text() == (straight.path / path).read_text(), path


@pytest.mark.e2e
def test_two_forced_runs_give_identical_model_and_metrics(repo):
    set_params(repo.path, {"train": {"device": "auto"}})
    out = repo.dvc("repro").stdout
    assert "training on cpu (picked by train.device: auto)" in out or "training on cuda" in out
    first = lock_hashes(repo)
    repo.dvc("repro", "--force")
    second = lock_hashes(repo)
    for path in ("models/model.pt", "metrics/eval.json", "metrics/train.json", "data/prepared"):
        assert first[path] == second[path], path
