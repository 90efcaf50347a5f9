"""End to end: the real dvc.yaml in a temporary git repo, on tiny generated data: a repro,
nothing to do after it, an experiment and the tables users read, a running experiment
shown as it trains, queued experiments, plain IDX files, two forced runs giving the same
bytes."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from helpers.data import TINY_PARAMS, write_raw
from helpers.repos import Repo, make_repo, set_params

OUTPUTS = [
    "data/raw/train-images-idx3-ubyte", "data/raw/t10k-labels-idx1-ubyte",
    "data/prepared/train.pt", "data/prepared/val.pt", "data/prepared/test.pt",
    "data/prepared/class_counts.json",
    "models/model.pt", "models/checkpoint.pt",
    "metrics/train.json", "metrics/train/metrics.json", "metrics/train/plots/metrics/val/acc.tsv",
    "metrics/eval.json", "metrics/per_class.csv", "metrics/confusion.csv", "metrics/misclassified.png",
]


def test_repro_then_nothing_to_do_then_an_experiment(repo):
    out = repo.dvc("repro").stdout
    for stage in ("download", "prepare", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    for path in OUTPUTS:
        assert (repo.path / path).is_file(), path
    metrics = json.loads((repo.path / "metrics/eval.json").read_text())
    assert list(metrics) == ["test_acc", "test_loss"]
    assert 0 <= metrics["test_acc"] <= 1 and metrics["test_loss"] > 0
    per_class = (repo.path / "metrics/per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,precision,recall,f1,support" and len(per_class) == 11
    assert (repo.path / "metrics/misclassified.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((repo.path / "metrics/train.json").read_text())
    assert list(summary) == ["best_val_acc", "epoch"] and summary["epoch"] == 2 and 0 <= summary["best_val_acc"] <= 1
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
    assert "test_acc" in data["metrics"]["metrics/eval.json"]["data"]
    assert data["metrics"]["metrics/train.json"]["data"]["epoch"] == 1

    # The tables users read, as a terminal 120 columns wide shows them (DVC folds what
    # doesn't fit into '…', right to left): the plain `dvc exp show` starts with test
    # accuracy, a value on every row; with --only-changed the metrics that changed, the
    # test loss among them (the accuracies may not change: the default net learns these tiny
    # images perfectly in an epoch), and both params the experiment set come whole.
    lines = in_terminal(repo, 120, "exp", "show", "--no-pager")
    header = next(line for line in lines if "Experiment" in line)
    assert header.split()[:3] == ["Experiment", "Created", "test_acc"], lines
    column = header.index("test_acc")
    rows = [line for line in lines[lines.index(header) + 1:] if set(line.strip()) != {"─"}]
    assert len(rows) == 3 and max(len(line) for line in lines) <= 120, lines  # workspace, branch, experiment
    assert all(0 <= float(row[column:column + len("test_acc")]) <= 1 for row in rows), lines
    lines = in_terminal(repo, 120, "exp", "show", "--no-pager", "--only-changed")
    names = next(line for line in lines if "Experiment" in line).split()
    assert {"test_loss", "epoch", "train.lr", "train.epochs"} <= set(names), lines
    assert max(len(line) for line in lines) <= 120, lines
    table = in_terminal(repo, 120, "metrics", "show")
    assert max(len(line) for line in table) <= 120 and "…" not in "".join(table), table
    assert table[0].split() == ["Path", "best_val_acc", "epoch", "test_acc", "test_loss"], table


def in_terminal(repo, columns: int, *args: str) -> list[str]:
    """`dvc *args`'s output lines as a terminal `columns` wide shows them (a pseudo-terminal)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in repo.env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo.path,
                            env={**env, "TERM": "xterm"}, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0, out
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode())  # colours and cursor codes
    return [line for line in text.replace("\r", "").splitlines() if line.strip()]


def test_a_running_experiment_shows_its_epochs_before_it_ends(tmp_path):
    """DVCLive and metrics/train.json are written as training goes, so `dvc exp show`
    (and the VS Code extension, which polls it) shows a run while it trains."""
    repo = make_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=3000),
                     params={"data": {"val_size": 60},
                             "train": {"model": "lenet", "epochs": 6, "batch_size": 16, "device": "cpu"}})
    repo.dvc("repro", "prepare")
    repo.commit("prepared")
    dvc = str(Path(sys.executable).parent / "dvc")
    proc = subprocess.Popen([dvc, "exp", "run"], cwd=repo.path, env=repo.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    summary, polled, seen_while_running = repo.path / "metrics/train.json", set(), set()
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            # The file is cheap to watch; `dvc exp show` (seconds each) runs once per new epoch.
            try:
                epoch = json.loads(summary.read_text())["epoch"]
            except (OSError, ValueError, KeyError):
                epoch = None
            if epoch is not None and epoch < 6 and epoch not in polled:
                polled.add(epoch)
                shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
                workspace = shown[0]["data"]["metrics"].get("metrics/train.json", {}).get("data", {})
                if "epoch" in workspace and proc.poll() is None:
                    seen_while_running.add(workspace["epoch"])
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert any(epoch < 6 for epoch in seen_while_running), (seen_while_running, output)
    rows = (repo.path / "metrics/train/plots/metrics/val/acc.tsv").read_text().splitlines()
    assert len(rows) == 1 + 6


@pytest.fixture
def reproduced(tmp_path, tiny_raw) -> Repo:
    """The pipeline reproduced (one epoch) and committed: a clean workspace to queue experiments from."""
    repo = make_repo(tmp_path / "repo", tiny_raw,
                     params={**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochs": 1}})
    repo.dvc("repro")
    repo.commit("results")
    return repo


def queue_states(repo: Repo) -> list[str]:
    """The Status column of `dvc queue status`, one entry a task."""
    lines = repo.dvc("queue", "status").stdout.splitlines()
    return [line.split()[-1] for line in lines[1:] if line.strip() and not line.startswith("Worker")]


def test_queued_experiments_run_two_at_a_time_and_leave_the_workspace_alone(reproduced):
    repo = reproduced
    params = (repo.path / "params.yaml").read_text()
    repo.dvc("exp", "run", "--queue", "-S", "train.lr=0.01,0.05")
    # `dvc queue start` lives as long as its workers, and a worker can hang in its own
    # shutdown after its task is done (seen once with DVC 3.67: "shutting down due to empty
    # queue", never "done"), so the test watches the queue instead of waiting on the command,
    # and ends the command and its workers (its process group) itself.
    start = subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "queue", "start", "-j", "2"],
                             cwd=repo.path, env=repo.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while {"Queued", "Running"} & set(queue_states(repo)):
            assert time.monotonic() < deadline, repo.dvc("queue", "status").stdout
            time.sleep(3)
    finally:
        try:
            repo.dvc("queue", "stop", "--kill", check=False, timeout=60)
        except subprocess.TimeoutExpired:
            pass  # the process group goes next, workers and all
        try:
            os.killpg(start.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # gone already, workers and all
        start.wait()
    states = queue_states(repo)
    assert states == ["Success", "Success"], repo.dvc("queue", "status").stdout

    shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
    runs = [rev["data"] for entry in shown for exp in (entry.get("experiments") or []) for rev in exp["revs"]]
    assert sorted(r["params"]["params.yaml"]["data"]["train"]["lr"] for r in runs) == [0.01, 0.05]
    for run in runs:
        assert 0 <= run["metrics"]["metrics/eval.json"]["data"]["test_acc"] <= 1
    assert repo.run("git", "status", "--porcelain").stdout == ""
    assert (repo.path / "params.yaml").read_text() == params


def lock_hashes(repo) -> dict[str, str]:
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def test_plain_uncompressed_raw_files_work_too(tmp_path):
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
