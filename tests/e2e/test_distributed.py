"""Distributed data parallel on CPU: Gloo processes under torchrun, on tiny data.

- `train.nproc: 2`: the stage relaunches itself under torchrun (dvc repro, with evaluate);
  SIGTERM to the relaunching stage stops every process.
- Two nodes: two torchrun agents, one process each, a c10d rendezvous on 127.0.0.1 and a
  copy of the repository each, as two machines. They train one model; then again with
  rank 1 killed after the first epoch, and end with that model byte for byte.

A worker killed on one node (restarted by torchrun, or resumed by train.resume) is in
test_resume.py; the unit parts (the store's namespaces, SyncBatchNorm) in
unit/test_distributed.py.

    pytest -n 0 tests/e2e/test_distributed.py
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from fmnist.model.model_file import load_model
from helpers.data import write_raw
from helpers.processes import (
    KILL_PARAMS,
    RUNTIME_LOCK,
    TRAIN_OUTPUTS,
    assert_same_run,
    final_state,
    launch,
    needs_proc,
    torchrun,
    workers_of,
)
from helpers.repos import make_repo

DDP_PARAMS = {"data": {"val_size": 60}, "train": {"epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu"}}


def test_train_nproc_runs_the_stage_under_torchrun(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=600)
    repo = make_repo(tmp_path / "repo", raw, params={**DDP_PARAMS, "train": {**DDP_PARAMS["train"], "nproc": 2}})
    out = repo.dvc("repro").stdout
    assert "launching 2 processes" in out and "--max-restarts=2" in out and "2 processes" in out
    metrics = json.loads((repo.path / "metrics/eval.json").read_text())
    assert metrics["test_acc"] > 0.3  # chance is 0.1



@needs_proc
def test_sigterm_to_the_relaunching_stage_stops_every_process_in_one_line_each(tmp_path):
    repo = make_repo(tmp_path / "repo", write_raw(tmp_path / "raw", n_train=600), params=KILL_PARAMS)
    repo.dvc("repro", "prepare")
    stage = subprocess.Popen([sys.executable, "stages/train.py", "data/prepared", *TRAIN_OUTPUTS, RUNTIME_LOCK],
                             cwd=repo.path, env=repo.env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
    assert "Traceback" not in err
    assert err.strip().endswith("terminated (SIGTERM); outputs are written whole or not at all")
    assert not (repo.path / "models/model.pt").exists()
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers.values()), "a worker was left running"



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@needs_proc
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
        written = [path for path in TRAIN_OUTPUTS if (node.path / path).exists()]
        assert written == (list(TRAIN_OUTPUTS) if node is writers[0] else []), (node.path, written)
    load_model(writers[0].path / "models/model.pt")  # the plain architecture, as evaluate loads it
    expected = final_state(writers[0])
    for path in TRAIN_OUTPUTS:
        (writers[0].path / path).rename(writers[0].path / f"{path}.first")

    # Rank 1 dies after the first epoch. Both agents restart their workers; rank 1's
    # machine has no checkpoint, so rank 0 hands it the state it restored.
    outs = launch(nodes, two_nodes("--max-restarts=1"), tmp_path, kill_rank=1)
    assert all(out.startswith("exit 0\n") for out in outs), outs
    writers = [node for node in nodes if (node.path / "models/model.pt").exists()]
    assert len(writers) == 1, outs
    assert "torchrun restarted the workers" in "".join(outs)
    assert_same_run(final_state(writers[0]), expected, "".join(outs))
