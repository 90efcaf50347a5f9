"""End to end: the real dvc.yaml in a temporary git repo, on tiny generated data."""

from __future__ import annotations

import yaml

from helpers import make_repo, set_params, write_raw


def lock_hashes(repo) -> dict[str, str]:
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def test_plain_uncompressed_files_work_too(tmp_path):
    repo = make_repo(tmp_path / "repo", write_raw(tmp_path / "plain", gz=False))
    repo.dvc("repro", "download")
    assert (repo.path / "data/raw/train-images-idx3-ubyte").is_file()


def test_two_forced_runs_give_identical_model_and_metrics(repo):
    set_params(repo.path, {"train": {"device": "auto"}})
    out = repo.dvc("repro").stdout
    assert "training on cpu (picked by train.device: auto)" in out or "training on cuda" in out
    first = lock_hashes(repo)
    repo.dvc("repro", "--force")
    second = lock_hashes(repo)
    for path in ("models/model.pt", "metrics/eval.json", "metrics/train.json", "data/prepared"):
        assert first[path] == second[path], path
