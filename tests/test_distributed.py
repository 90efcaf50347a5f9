"""Distributed data parallel on CPU: Gloo processes under torchrun, on tiny data.

- `train.nproc: 2`: the stage relaunches itself under torchrun (dvc repro, with evaluate).
- Two nodes: two torchrun agents, one process each, a c10d rendezvous on 127.0.0.1 and a
  copy of the repository each, as two machines. They train one model; then again with
  rank 1 killed after the first epoch, and end with that model byte for byte.
- One node, a worker killed with SIGKILL mid-run: restarted by torchrun --max-restarts
  (three processes), or (no restarts) resumed by train.resume; either ends as the
  uninterrupted run.

    pytest -n 0 tests/test_distributed.py
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from helpers import ROOT, make_repo, write_raw
from fmnist import training
from fmnist.distributed import World, _fresh_namespace
from fmnist.model import build_model
from fmnist.model_file import load_model

DDP_PARAMS = {"data": {"val_size": 60}, "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu"}}
OUTPUTS = ("models/model.pt", "models/checkpoint.pt", "metrics/train", "metrics/train.json")
# Long enough for a kill after the first epoch to land mid-run, and slow enough to learn
# that the best epoch (the one saved) comes after the kill: the restarted part counts.
KILL_PARAMS = {"data": {"val_size": 60},
               "train": {"epochs": 6, "batch_size": 48, "lr": 3e-5, "device": "cpu", "nproc": 2}}
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds workers through /proc")


def torchrun(*flags: str, outputs: tuple[str, ...] = OUTPUTS) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *flags, "stages/train.py", "data/prepared", *outputs]


@pytest.mark.e2e
def test_train_nproc_runs_the_stage_under_torchrun(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=600)
    repo = make_repo(tmp_path / "repo", raw, params={**DDP_PARAMS, "train": {**DDP_PARAMS["train"], "nproc": 2}})
    out = repo.dvc("repro").stdout
    assert "launching 2 processes" in out and "--max-restarts=2" in out and "2 processes" in out
    metrics = json.loads((repo.path / "metrics/eval.json").read_text())
    assert metrics["test_acc"] > 0.3  # chance is 0.1


@needs_proc
@pytest.mark.e2e
def test_sigterm_to_the_relaunching_stage_stops_every_process_in_one_line_each(tmp_path):
    repo = make_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=600), params=KILL_PARAMS)
    repo.dvc("repro", "prepare")
    stage = subprocess.Popen([sys.executable, "stages/train.py", "data/prepared", *OUTPUTS], cwd=repo.path,
                             env=repo.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600
        while not (repo.path / "models/checkpoint.pt").exists():
            assert stage.poll() is None and time.monotonic() < deadline, stage.communicate()
            time.sleep(0.05)
        workers = workers_of([stage])
        assert sorted(workers) == [0, 1]
        stage.send_signal(signal.SIGTERM)  # the stage only, as a scheduler cancelling it
        out, err = stage.communicate(timeout=120)
    finally:
        if stage.poll() is None:
            stage.kill()
    assert stage.returncode == 143, (out, err)
    assert "Traceback" not in err and err.strip().endswith("terminated (SIGTERM); outputs are written whole or not at all")
    assert not (repo.path / "models/model.pt").exists()
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers.values()), "a worker was left running"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- a worker killed mid-run, and the run it must end as -----------------------

REF_OUTPUTS = ("models/ref.pt", "models/ref-checkpoint.pt", "metrics/ref", "metrics/ref.json")
LOGS = ("metrics.json", "plots/metrics/train/loss.tsv", "plots/metrics/val/acc.tsv")


def final_state(repo, outputs: tuple[str, ...] = OUTPUTS) -> dict:
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
               for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()))
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
    for node, log in zip(nodes, logs):
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
    return [f"exit {agent.returncode}\n" + log.read_text() for agent, log in zip(agents, logs)]


@needs_proc
@pytest.mark.e2e
def test_two_nodes_on_loopback_train_one_model_and_survive_a_killed_worker(tmp_path):
    """Two torchrun agents with one process each meet at a c10d rendezvous on 127.0.0.1,
    as two machines would; each has its own copy of the repository and of the data."""
    raw = write_raw(tmp_path / "raw", n_train=1000)
    nodes = [make_repo(tmp_path / f"node{i}", raw, params=KILL_PARAMS) for i in range(2)]
    for node in nodes:
        node.dvc("repro", "prepare")
        # The two "machines" share this one's cores: one thread each, as torchrun sets
        # for several processes on one node, or they slow each other down many times over.
        node.env["OMP_NUM_THREADS"] = "1"

    def two_nodes(*flags: str) -> list[str]:
        return torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", *flags,
                        f"--rdzv_endpoint=127.0.0.1:{free_port()}", f"--rdzv_id={uuid.uuid4().hex[:8]}")

    outs = launch(nodes, two_nodes(), tmp_path)
    assert all(out.startswith("exit 0\n") for out in outs), outs
    assert "2 processes" in "".join(outs)
    writers = [node for node in nodes if (node.path / "models/model.pt").exists()]
    assert len(writers) == 1, outs  # only global rank 0 writes, on one of the two machines
    for node in nodes:
        written = [path for path in OUTPUTS if (node.path / path).exists()]
        assert written == (list(OUTPUTS) if node is writers[0] else []), (node.path, written)
    load_model(writers[0].path / "models/model.pt")  # the plain architecture, as evaluate loads it
    expected = final_state(writers[0])
    for path in OUTPUTS:
        (writers[0].path / path).rename(writers[0].path / f"{path}.first")

    # Rank 1 dies after the first epoch. Both agents restart their workers; rank 1's
    # machine has no checkpoint, so rank 0 hands it the state it restored.
    outs = launch(nodes, two_nodes("--max-restarts=1"), tmp_path, kill_rank=1)
    assert all(out.startswith("exit 0\n") for out in outs), outs
    writers = [node for node in nodes if (node.path / "models/model.pt").exists()]
    assert len(writers) == 1, outs
    assert "torchrun restarted the workers" in "".join(outs)
    assert_same_run(final_state(writers[0]), expected, "".join(outs))


@needs_proc
@pytest.mark.e2e
def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_never_interrupted(tmp_path):
    # Three processes: with two, the sum of the ranks' gradients can't depend on the order.
    raw = write_raw(tmp_path / "raw", n_train=1000)
    repo = make_repo(tmp_path / "repo", raw, params={
        **KILL_PARAMS, "train": {**KILL_PARAMS["train"], "nproc": 3, "max_restarts": 1}})
    repo.dvc("repro", "prepare")
    # Uninterrupted, through train.nproc: the stage relaunches itself with --max-restarts.
    out = repo.run(sys.executable, "stages/train.py", "data/prepared", *REF_OUTPUTS).stdout
    assert "--max-restarts=1" in out and "3 processes" in out
    # As a user would launch it; rank 2 dies after the first epoch and torchrun starts
    # all three again, which resume from the checkpoint rank 0 wrote.
    out, = launch([repo], torchrun("--standalone", "--nproc_per_node=3", "--max-restarts=1"), tmp_path, kill_rank=2)
    assert out.startswith("exit 0\n"), out
    assert "torchrun restarted the workers (restart 1)" in out and out.count("saved epoch") == 1, out
    assert_same_run(final_state(repo), final_state(repo, REF_OUTPUTS), out)


@needs_proc
@pytest.mark.e2e
def test_resume_under_ddp_after_rank_0_was_killed(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=1000)
    repo = make_repo(tmp_path / "repo", raw, params={**KILL_PARAMS, "train": {**KILL_PARAMS["train"], "resume": True}})
    repo.dvc("repro", "prepare")
    cmd = torchrun("--standalone", "--nproc_per_node=2")
    out = repo.run(*cmd[:-4], *REF_OUTPUTS).stdout
    assert "starting afresh" in out
    # No restarts: killing rank 0 (the one that writes the checkpoint) ends the run...
    out, = launch([repo], cmd, tmp_path, kill_rank=0)
    assert not out.startswith("exit 0\n") and not (repo.path / "models/model.pt").exists(), out
    assert "this is a bug" not in out, out  # rank 1 says it lost rank 0 (unless SIGTERM came first)
    # ...and train.resume takes it up again.
    out = repo.run(*cmd).stdout
    assert "train.resume: resuming after epoch" in out, out
    assert_same_run(final_state(repo), final_state(repo, REF_OUTPUTS), out)


# --- unit tests -------------------------------------------------------------------

def test_a_restart_gets_a_store_namespace_no_dead_worker_wrote_to():
    """torchrun's store outlives the workers: what an earlier attempt wrote must not
    reach the next one, even one whose rank 1 died halfway through the agreement."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    server.set("fmnist/ask/1", "a-dead-workers-nonce")

    def attempt(world: int) -> list[tuple[bool, bytes]]:
        seen = {}

        def rank(r: int) -> None:
            store = _fresh_namespace(dist.TCPStore("127.0.0.1", server.port, is_master=False), r, world, poll=0.01)
            fresh = not store.check(["probe"])
            store.add("probe", 1)
            seen[r] = (fresh, store)

        threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(world)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(seen) == list(range(world)), "a rank never got a namespace"
        return [(fresh, store.add("probe", 0)) for fresh, store in seen.values()]

    for _ in range(2):
        ranks = attempt(3)
        # All three ranks counted in one namespace, and nobody before them (not 6):
        assert [count for _, count in ranks] == [3, 3, 3]
        assert any(fresh for fresh, _ in ranks)


def test_batchnorm_is_synced_across_processes_on_cuda_only(monkeypatch):
    """SyncBatchNorm where the backend runs it (CUDA); plain BatchNorm on CPU and alone."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    monkeypatch.setattr(training, "to_device_layout", lambda net, device: net)  # no GPU here
    monkeypatch.setattr(training, "wrap_ddp", lambda model, device, world: model)  # nor a process group
    for device, world, synced in (("cuda", World(0, 2), True), ("cpu", World(0, 2), False), ("cuda", World(), False)):
        net = training.build(p, 1000, torch.device(device), world).net
        kinds = {type(m) for m in net.modules()}
        assert (torch.nn.SyncBatchNorm in kinds) == synced and (torch.nn.BatchNorm2d in kinds) != synced


def test_sync_batchnorm_weights_load_into_the_plain_net():
    """On CUDA the DDP net has SyncBatchNorm layers; the model file must still load into
    the plain architecture that evaluate and predict build."""
    for name in ("cnn", "lenet"):
        synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_model(name))
        plain = build_model(name)
        plain.load_state_dict(synced.state_dict())  # strict: same keys, same shapes
        if name == "cnn":
            assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
