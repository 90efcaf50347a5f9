"""fmnist/training/distributed.py, the parts that run in one process: the store's namespaces across
restarts, SyncBatchNorm where the backend runs it. Launches under torchrun are in
e2e/test_distributed.py and e2e/test_resume.py.
"""

from __future__ import annotations

import threading

import torch
import torch.distributed as dist
import yaml

from fmnist.model.nets import build_model
from fmnist.params import Train
from fmnist.training import distributed
from fmnist.training import loop as training
from fmnist.training.distributed import World, _fresh_namespace, wrap_ddp
from helpers import ROOT
from helpers.data import blank


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
    p = Train.model_validate(yaml.safe_load((ROOT / "params.yaml").read_text())["train"])
    monkeypatch.setattr(training, "to_device_layout", lambda net, device: net)  # no GPU here
    monkeypatch.setattr(training, "wrap_ddp", lambda model, device, world: model)  # nor a process group
    for device, world, synced in (("cuda", World(0, 2), True), ("cpu", World(0, 2), False), ("cuda", World(), False)):
        net = training.build(p, blank(1000), torch.device(device), None, world).net
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


def test_ddp_broadcasts_buffers_every_step_only_without_syncbatchnorm(monkeypatch):
    """SyncBatchNorm keeps every rank's statistics alike: DDP's broadcast before each forward is left
    out. (DDP itself, which refuses SyncBatchNorm on CPU modules, is stood in for.)"""
    made = []
    monkeypatch.setattr(distributed, "DistributedDataParallel", lambda model, **kwargs: made.append(kwargs))
    wrap_ddp(build_model("cnn"), torch.device("cpu"), World(0, 2))
    wrap_ddp(torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_model("cnn")), torch.device("cuda", 1), World(1, 2))
    assert [m["forward_sync_buffers"] for m in made] == [True, False]
    assert [m["device_ids"] for m in made] == [None, [1]]
