"""Processes: a pipeline interrupted or failing, signals, torchrun launches and their outputs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from helpers.repos import Repo

# With 1600 training images, time to interrupt a run mid-way.
SLOW = {"train": {"epochs": 6, "batch_size": 16}}


def assert_clean_failure(proc, *expected: str) -> None:
    """A non-zero exit whose stderr says each of `expected`, without a traceback."""
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays
    # ignored across exec: give `dvc repro` (and so the stage) Ctrl-C as a terminal has it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_repro(repo: Repo) -> subprocess.Popen:
    """`dvc repro` in a process group of its own (os.killpg signals it as a terminal's Ctrl-C
    or a CI runner does), its output in proc.stdout."""
    return subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo.path, env=repo.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=default_sigint)  # noqa: PLW1509 - one signal() call, no lock taken


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `path` exists; fails, with the output, if `proc` ends first."""
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)


# --- torchrun launches: e2e/test_distributed.py, e2e/test_resume.py ----------------

# The train stage's outputs, in the order its command names them; the lock its model card
# records comes after them (dvc.yaml's train cmd).
TRAIN_OUTPUTS = ("models/model.pt", "models/checkpoint.pt", "metrics/train", "metrics/train.json")
RUNTIME_LOCK = "requirements/runtime-versions.txt"
# Long enough for a kill after the first epoch to land mid-run, and slow enough to learn
# that the best epoch (the one saved) comes after the kill: the restarted part counts.
KILL_PARAMS = {"data": {"val_size": 60},
               "train": {"epochs": 6, "batch_size": 48, "lr": 3e-5, "device": "cpu", "nproc": 2}}
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds workers through /proc")


def torchrun(*flags: str, outputs: tuple[str, ...] = TRAIN_OUTPUTS) -> list[str]:
    """The train stage's command under torchrun with `flags`, writing `outputs`."""
    return [sys.executable, "-m", "torch.distributed.run", *flags,
            "stages/train.py", "data/prepared", *outputs, RUNTIME_LOCK]


# What DVCLive writes in metrics/train/, compared between runs.
LOGS = ("metrics.json", "plots/metrics/train/loss.tsv", "plots/metrics/val/acc.tsv")


def final_state(repo, outputs: tuple[str, ...] = TRAIN_OUTPUTS) -> dict:
    model, checkpoint, live, summary = (repo.path / path for path in outputs)
    return {"model": model.read_bytes(), "checkpoint": torch.load(checkpoint, weights_only=True),
            "summary": summary.read_text(), "logs": [(live / log).read_text() for log in LOGS]}


def assert_same_run(got: dict, want: dict, out: str) -> None:
    """A run that resumed after a kill ends as the uninterrupted one: the model file byte
    for byte, the last checkpoint's contents, the logged figures."""
    resumed_after = int(out.split("resuming after epoch ")[1].split()[0])
    assert resumed_after < KILL_PARAMS["train"]["epochs"], out
    assert torch.load(io.BytesIO(got["model"]), weights_only=True)["epoch"] > resumed_after, \
        "the best epoch came before the kill: the test would prove nothing"
    assert got["model"] == want["model"]
    # The checkpoint holds the same values; its bytes differ in how pickle shares strings.
    a, b = got["checkpoint"], want["checkpoint"]
    assert a["epoch"] == b["epoch"] and a["history"] == b["history"]
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    assert all(torch.equal(x["momentum_buffer"], y["momentum_buffer"])
               for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True))
    assert got["summary"] == want["summary"] and got["logs"] == want["logs"]


def workers_of(agents: list[subprocess.Popen]) -> dict[int, int]:
    """{global rank: pid} of the worker processes these torchrun agents started."""
    parents, ranks = {agent.pid for agent in agents}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) in parents:
                env = (stat.parent / "environ").read_bytes().split(b"\0")
                rank = next(int(var[5:]) for var in env if var.startswith(b"RANK="))
                ranks[rank] = int(stat.parent.name)
        except (OSError, ValueError, StopIteration, IndexError):
            continue  # gone meanwhile, or not a worker
    return ranks


def launch(nodes: list, cmd: list[str], tmp_path: Path, *, kill_rank: int | None = None) -> list[str]:
    """Run `cmd` (a torchrun launch) in each of `nodes` at once; with `kill_rank`, SIGKILL
    that rank's worker once the first checkpoint is written. Returns each agent's output."""
    logs = [tmp_path / f"agent{i}-{uuid.uuid4().hex[:6]}.log" for i in range(len(nodes))]
    agents = []
    for node, log in zip(nodes, logs, strict=True):
        with log.open("w") as out:
            agents.append(subprocess.Popen(cmd, cwd=node.path, env=node.env, stdout=out, stderr=subprocess.STDOUT))
    try:
        if kill_rank is not None:
            deadline = time.monotonic() + 600
            while not any((node.path / "models/checkpoint.pt").exists() for node in nodes):
                assert all(agent.poll() is None for agent in agents) and time.monotonic() < deadline, \
                    [log.read_text() for log in logs]
                time.sleep(0.05)
            os.kill(workers_of(agents)[kill_rank], signal.SIGKILL)
        for agent in agents:
            agent.wait(timeout=900)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    return [f"exit {agent.returncode}\n" + log.read_text() for agent, log in zip(agents, logs, strict=True)]
