"""Builders the tests share, by theme; what only one test file uses stays in that file.

    from helpers.data import write_raw
    from helpers.repos import make_repo
    folder = write_raw(tmp_path / "raw")            # four tiny gzipped IDX files
    repo = make_repo(tmp_path / "repo", folder)     # the pipeline in its own git repo
    repo.dvc("repro")

data (tiny IDX data), repos (scratch pipelines), processes (interrupted runs, signals,
torchrun), pictures (encoders, a model file), damage (damaged files), sweeps (Optuna
fakes), import_map (what a file imports), not_files (a pipe, a socket, a device, a folder
or a loop of links where a file should be; a pipe a writer feeds), tools (the one rule for a
missing outside tool: skip, or fail under CI).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
