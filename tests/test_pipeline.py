"""End to end: the real dvc.yaml in a temporary git repo, on tiny generated data."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

from conftest import ROOT

OUTPUTS = [
    "data/raw/train-images-idx3-ubyte", "data/raw/t10k-labels-idx1-ubyte",
    "data/prepared/train.pt", "data/prepared/val.pt", "data/prepared/test.pt",
    "data/prepared/class_counts.json",
    "models/model.pt", "models/checkpoint.pt",
    "metrics/train/metrics.json", "metrics/train/plots/metrics/val/acc.tsv",
    "metrics/eval.json", "metrics/per_class.csv", "metrics/confusion.csv", "metrics/misclassified.png",
]


def test_repro_then_nothing_to_do_then_an_experiment(repo):
    out = repo.dvc("repro").stdout
    for stage in ("download", "prepare", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    for path in OUTPUTS:
        assert (repo.path / path).is_file(), path
    metrics = json.loads((repo.path / "metrics/eval.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["f1_macro"] > 0 and metrics["loss"] > 0
    assert set(metrics["per_class"]["ankle_boot"]) == {"precision", "recall", "f1", "support"}
    assert (repo.path / "metrics/misclassified.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    live = json.loads((repo.path / "metrics/train/metrics.json").read_text())
    assert {"train", "val", "best"} <= set(live) and live["step"] == 1
    assert (repo.path / "metrics/train/.gitignore").is_file()  # DVC's own file survives
    repo.commit("first run")

    again = repo.dvc("repro").stdout
    assert "Running stage" not in again, again
    assert repo.dvc("status", "--json").stdout.strip() == "{}"

    repo.dvc("exp", "run", "-S", "train.lr=0.02", "-S", "train.epochs=1")
    exps = json.loads(repo.dvc("exp", "show", "--json").stdout)
    found = [
        rev["data"] for entry in exps for exp in (entry.get("experiments") or [])
        for rev in exp["revs"]
    ]
    assert found, exps
    data = found[0]
    train_params = data["params"]["params.yaml"]["data"]["train"]
    assert train_params["lr"] == 0.02 and train_params["epochs"] == 1
    assert "accuracy" in data["metrics"]["metrics/eval.json"]["data"]
    assert data["metrics"]["metrics/train/metrics.json"]["data"]["step"] == 0


def _imports(path: Path, root: Path) -> set[str]:
    """Project files `path` imports, followed transitively."""
    seen: set[str] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        for name in names:
            candidates = [root / (name.replace(".", "/") + ".py"), root / "stages" / f"{name}.py"]
            if name.startswith("fmnist"):
                candidates.append(root / "fmnist/__init__.py")
            for file in candidates:
                rel = str(file.relative_to(root))
                if file.is_file() and rel not in seen:
                    seen.add(rel)
                    todo.append(file)
    return seen


def test_dvc_yaml_lists_every_module_each_stage_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = f"stages/{name}.py"
        deps = {d for d in stage["deps"] if d.endswith(".py")}
        assert script in deps
        assert deps == _imports(ROOT / script, ROOT) | {script}, name
