"""Shared fixtures: tiny IDX files and a throwaway copy of the pipeline in a git repo."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Under pytest-xdist, each worker gets its share of the cores for torch's OpenMP threads,
# and so do the stages and tools its tests start (they inherit the environment). Two
# workers of two threads each on two cores made OpenMP's spinning threads fight: the
# unit tests took 30 s to 2 min from run to run instead of 16 s.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    if "torch" in sys.modules:  # too late for the variable to take effect in this process
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

RAW_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Small settings that still exercise every code path of the pipeline.
TINY_PARAMS = {
    "data": {"val_size": 60},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu"},
    "evaluate": {"batch_size": 64, "misclassified": 6},
}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Encode a uint8 array as an IDX file."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images a small net can learn in a few steps: class k lights up band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_raw(folder: Path, n_train: int = 400, n_test: int = 120, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic(n, seed)
        for name, data in zip(RAW_NAMES[split], (idx_bytes(images, 2051), idx_bytes(labels, 2049))):
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    return write_raw(tmp_path / "raw-source")


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def set_params(repo: Path, overrides: dict) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in overrides.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


class Repo:
    """A copy of the pipeline in its own git repo, with the tools of this venv on PATH."""

    def __init__(self, path: Path, env: dict):
        self.path, self.env = path, env

    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(list(cmd), self.path, self.env, check=check, **kw)

    def dvc(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return self.run(str(Path(sys.executable).parent / "dvc"), *args, check=check, **kw)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)


def make_repo(path: Path, raw_source: Path, params: dict = TINY_PARAMS) -> Repo:
    path.mkdir(parents=True)
    for item in ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore"):
        shutil.copy2(ROOT / item, path / item)
    for folder in ("stages", "fmnist", "requirements"):  # requirements/: the lock, a dependency of stages
        shutil.copytree(ROOT / folder, path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (path / ".dvc").mkdir()
    shutil.copy2(ROOT / ".dvc" / "config", path / ".dvc" / "config")
    shutil.copy2(ROOT / ".dvc" / ".gitignore", path / ".dvc" / ".gitignore")
    env = dict(os.environ)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # The copy's own fmnist package, not the one this venv has installed.
        "PYTHONPATH": str(path),
        "FASHION_MNIST_DIR": str(raw_source),
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    })
    repo = Repo(path, env)
    repo.run("git", "init", "-q", "-b", "main")
    set_params(repo.path, params)
    repo.commit("pipeline")
    return repo


@pytest.fixture
def repo(tmp_path: Path, tiny_raw: Path) -> Repo:
    return make_repo(tmp_path / "repo", tiny_raw)
