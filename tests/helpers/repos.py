"""Scratch copies of the pipeline in their own git repos, and what reads them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import ROOT
from helpers.data import TINY_PARAMS, write_raw


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


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def table_row(markdown: str, first_cell: str) -> list[str]:
    """The cells of the markdown table row whose first cell is `first_cell`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"no table row '{first_cell}' in:\n{markdown}")



def reproduced_repo(folder: Path) -> Repo:
    """A scratch repo on tiny raw data in `folder`, its pipeline reproduced and committed."""
    repo = make_repo(folder / "repo", write_raw(folder / "raw"))
    repo.dvc("repro")
    repo.commit("reproduced")
    return repo


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
