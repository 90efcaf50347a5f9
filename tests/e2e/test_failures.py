"""Damaged or missing inputs, a full disk, a read-only folder, a diverging run, signals:
one line naming the file, what is wrong and what to do; exit 1 (143 on SIGTERM); the
previous outputs left whole, and the next `dvc repro` completes.

The tests damage a real pipeline's files and run its stage scripts as subprocesses, the
commands dvc.yaml runs. The readers themselves, on damaged copies, are unit-tested with
their modules (unit/test_raw.py, test_splits.py, test_model_file.py, test_checkpoint.py,
test_params.py, test_io.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fmnist.core.io import torch_bytes
from fmnist.model.model_file import load_model
from helpers import ROOT
from helpers.damage import file_size_limit, one_line
from helpers.data import TINY_PARAMS, write_raw
from helpers.processes import SLOW, assert_clean_failure, start_repro, wait_for
from helpers.repos import make_repo, reproduced_repo, set_params

# Its tests share a module fixture that takes a minute to build: one worker builds it, once
# (pyproject.toml runs pytest with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("failures")


# --- the stages, as subprocesses, on a reproduced pipeline -------------------------

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
    return reproduced_repo(tmp_path_factory.mktemp("damage"))


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


# --- a stage fed a damaged file ---------------------------------------------------

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
    "history damaged": (lambda c, data: torch_bytes({**c, "history": [*c["history"][:1], "x"]}),
                        "is damaged (a row of history is 'x')"),
    "momentum of the wrong shape": (
        lambda c, data: torch_bytes({**c, "optimizer": {**c["optimizer"], "state": {
            **c["optimizer"]["state"], 0: {"momentum_buffer": torch.zeros(2)}}}}),
        "is damaged (optimizer state 'momentum_buffer' doesn't fit its weight)"),
}


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


# --- the download stage: damaged or missing source files ----------------------------

def _corrupt(folder: Path, name: str, data: bytes) -> None:
    (folder / f"{name}.gz").unlink()
    (folder / name).write_bytes(data)


@pytest.mark.parametrize("name, data, message", [
    ("train-images-idx3-ubyte", b"", "train-images-idx3-ubyte: the file is empty"),
    ("train-images-idx3-ubyte", b"\x1f\x8b\x08\x00garbage", "train-images-idx3-ubyte: not a readable gzip file"),
    ("t10k-labels-idx1-ubyte", (2051).to_bytes(4, "big") + b"\0" * 8,
     "t10k-labels-idx1-ubyte: wrong magic number 2051"),
    ("t10k-images-idx3-ubyte",
     (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (120, 28, 28)) + b"\0" * 100,
     "t10k-images-idx3-ubyte: truncated"),
    ("t10k-images-idx3-ubyte",
     (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (1, 32, 32)) + b"\0" * 1024,
     "images are 32x32, expected 28x28"),
    ("t10k-labels-idx1-ubyte", (2049).to_bytes(4, "big") + (119).to_bytes(4, "big") + b"\0" * 119,
     "holds 120 images but"),
    ("t10k-labels-idx1-ubyte", (2049).to_bytes(4, "big") + (120).to_bytes(4, "big") + b"\x0b" * 120,
     "t10k-labels-idx1-ubyte: label 11 at position 0, expected 0-9"),
])
def test_bad_raw_files_are_named_and_nothing_is_written(repo, tiny_raw, name, data, message):
    _corrupt(tiny_raw, name, data)
    proc = repo.dvc("repro", check=False)
    assert_clean_failure(proc, message)
    assert not (repo.path / "data/raw").exists()
    assert not list((repo.path / ".dvc").glob("cache/files/md5/*/*"))


def test_a_missing_source_file_or_folder_is_named(repo, tiny_raw):
    (tiny_raw / "train-labels-idx1-ubyte.gz").unlink()
    assert_clean_failure(repo.dvc("repro", check=False), "train-labels-idx1-ubyte: missing")
    repo.env["FASHION_MNIST_DIR"] = str(tiny_raw / "nowhere")
    assert_clean_failure(repo.dvc("repro", check=False), "nowhere: no such folder")



# --- a full disk, a read-only folder ---------------------------------------------

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


@pytest.mark.parametrize("stage, limit, path, kept", FULL_DISK, ids=[s for s, *_ in FULL_DISK])
def test_a_full_disk_names_the_file_and_keeps_the_previous_output(pipeline, stage, limit, path, kept):
    before = snapshot(pipeline, *kept)
    proc = run_stage(pipeline, stage, preexec_fn=file_size_limit(limit))
    assert_stopped(proc, f"error: {path}: could not write it (File too large); the previous one is unchanged")
    assert snapshot(pipeline, *kept) == before
    assert no_temporaries(pipeline) == []


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


# --- a diverging run ----------------------------------------------------------------

def test_diverging_training_names_epoch_and_batch_and_writes_no_model(repo):
    set_params(repo.path, {"train": {"lr": 10.0, "label_smoothing": 0.0, "weight_decay": 0.0}})
    proc = repo.dvc("repro", check=False)
    # the loss, or with BatchNorm after every convolution a running variance, overflows first
    assert_clean_failure(proc, "training diverged: ", " became non-finite at epoch ", "; try a smaller train.lr")
    assert not (repo.path / "models/model.pt").exists()
    # metrics/train.json, written after each epoch, holds at most the epochs before the divergence
    summary = repo.path / "metrics/train.json"
    epoch = int(proc.stderr.split(" became non-finite at epoch ")[1].split(",")[0])
    assert not summary.exists() or json.loads(summary.read_text())["epoch"] < epoch



# --- signals ----------------------------------------------------------------------

@pytest.fixture
def four_epoch_repo(tmp_path):
    """Four epochs of a few seconds each: time to send a signal after the first one."""
    repo = make_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=600),
                     params={**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 4, "batch_size": 8}})
    repo.dvc("repro", "prepare")
    return repo


def assert_whole(repo) -> None:
    """Every output there is whole: it loads."""
    if (repo.path / "models/checkpoint.pt").exists():
        assert torch.load(repo.path / "models/checkpoint.pt", weights_only=True)["epoch"] >= 1
    if (repo.path / "models/model.pt").exists():
        load_model(repo.path / "models/model.pt")
    assert no_temporaries(repo) == []


TERMINATED = "terminated (SIGTERM); outputs are written whole or not at all"


def test_sigterm_stops_the_train_stage_like_ctrl_c_and_the_next_repro_completes(four_epoch_repo):
    checkpoint = four_epoch_repo.path / "models/checkpoint.pt"
    # Sent to the stage itself.
    proc = subprocess.Popen(stage_cmd("train"), cwd=four_epoch_repo.path, env=four_epoch_repo.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(checkpoint, proc, timeout=300)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, (proc.returncode, out, err)
    assert err.strip() == TERMINATED
    assert "saved epoch" not in out and not (four_epoch_repo.path / "models/model.pt").exists()
    assert_whole(four_epoch_repo)

    # Sent to `dvc repro`'s process group, as a CI runner or scheduler cancelling a job
    # does: DVC dies of it (it doesn't pass it on), the stage reports and exits 143.
    checkpoint.unlink()
    dvc = str(Path(sys.executable).parent / "dvc")
    proc = subprocess.Popen([dvc, "repro"], cwd=four_epoch_repo.path, env=four_epoch_repo.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(checkpoint, proc, timeout=300)
    os.killpg(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and TERMINATED in out and "Traceback" not in out, out
    assert_whole(four_epoch_repo)

    four_epoch_repo.dvc("repro")
    assert_whole(four_epoch_repo)
    assert (four_epoch_repo.path / "models/model.pt").is_file()
    assert (four_epoch_repo.path / "metrics/eval.json").is_file()


@pytest.fixture
def slow_repo(tmp_path):
    return make_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=1600))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_training_leaves_no_model_and_the_next_repro_completes(slow_repo, sig):
    """Ctrl-C (SIGINT to the process group) or SIGKILL; the next repro is checked after
    SIGKILL, the harsher of the two (Ctrl-C's outputs are checked the same way)."""
    set_params(slow_repo.path, SLOW)
    proc = start_repro(slow_repo)
    wait_for(slow_repo.path / "metrics/train.json", proc)  # written after the checkpoint
    os.killpg(proc.pid, sig)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0, output
    assert not (slow_repo.path / "models/model.pt").exists()
    # Per-epoch logs show the epochs the killed run did; they are whole files.
    assert json.loads((slow_repo.path / "metrics/train.json").read_text())["epoch"] < 6
    assert no_temporaries(slow_repo) == []
    if sig == signal.SIGINT:
        return
    slow_repo.dvc("repro")
    assert (slow_repo.path / "models/model.pt").is_file()
    assert no_temporaries(slow_repo) == []
