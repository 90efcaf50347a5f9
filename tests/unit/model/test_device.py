"""fmnist/model/device.py: the device train.device names, the autocast dtype train.precision gives on it,
the GPU settings; and the check of train.nproc against the devices (fmnist/training/distributed.py).

Every branch runs here, without a GPU: the device's properties are stood in for (torch.cuda's
availability, capability and count, MPS's availability, the CPU's flags).
"""

from __future__ import annotations

import re
import runpy

import pytest
import torch
import yaml

from fmnist.core.errors import ParamError
from fmnist.model import device as device_module
from fmnist.model.device import configure, native_bf16, pick_device, pick_dtype, placement
from fmnist.training import distributed
from fmnist.training.distributed import check_nproc
from helpers import ROOT

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
GPUS = {(7, 0): "Tesla V100-SXM2-16GB", (7, 5): "Tesla T4", (8, 0): "NVIDIA A100-SXM4-40GB",
        (8, 9): "NVIDIA L4", (9, 0): "NVIDIA H100 80GB HBM3"}
# torch.cpu.get_capabilities() of a few CPUs, the flags that matter here
CPUS = {
    "Sapphire Rapids (AMX)": {"avx512_f": True, "avx512_bf16": True, "amx_bf16": True},
    "Zen 4 (AVX512-BF16)": {"avx512_f": True, "avx512_bf16": True, "amx_bf16": False},
    "Ice Lake (AVX-512, no BF16)": {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False},
    "Zen 2 (AVX2)": {"avx2": True},
    "Graviton 3 (Arm BF16)": {"architecture": "arm64", "bf16": True},
}


@pytest.fixture
def machine(monkeypatch):
    """A stand-in machine: `machine(cuda=[(8, 0)], mps=False, cpu={...})`."""
    def stand_in(cuda: list[tuple[int, int]] = (), mps: bool = False, cpu: dict | None = None, onednn: bool = True):
        def index(device=None) -> int:
            device = torch.device(device) if device is not None else CUDA
            return device.index if isinstance(device, torch.device) and device.index is not None else 0
        monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(cuda))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(cuda))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cuda[index(device)])
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: GPUS[cuda[index(device)]])
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: cpu or {})
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: onednn)
    return stand_in


def test_auto_picks_cuda_then_mps_then_cpu(machine):
    for cuda, mps, expected in (([(8, 0)], True, "cuda"), ([], True, "mps"), ([], False, "cpu")):
        machine(cuda=cuda, mps=mps)
        assert pick_device("auto") == torch.device(expected)
    assert pick_device("cpu") == CPU


def test_a_missing_device_is_a_clear_error(machine):
    machine()
    for name in ("cuda", "mps"):
        with pytest.raises(ParamError, match=rf"^train\.device: {name} was asked for but this machine has no {name} "
                                             r"device; use 'auto' or 'cpu'$"):
            pick_device(name)


def test_bf16_is_native_on_cuda_from_compute_capability_8_0(machine):
    for capability, native in (((7, 0), False), ((7, 5), False), ((8, 0), True), ((8, 9), True), ((9, 0), True)):
        machine(cuda=[capability])
        assert native_bf16(CUDA) is native, GPUS[capability]
        assert pick_dtype("auto", CUDA) == (torch.bfloat16 if native else None)
        assert pick_dtype("fp32", CUDA) is None


def test_bf16_is_native_on_cpus_with_avx512_bf16_amx_or_arm_bf16_and_onednn(machine):
    for name, flags in CPUS.items():
        native = "AMX" in name or "BF16" in name.replace("no BF16", "")
        machine(cpu=flags)
        assert native_bf16(CPU) is native, name
        assert pick_dtype("auto", CPU) == (torch.bfloat16 if native else None), name
    machine(cpu=CPUS["Sapphire Rapids (AMX)"], onednn=False)  # no oneDNN in torch: nothing would use the flags
    assert not native_bf16(CPU) and pick_dtype("auto", CPU) is None


def test_a_run_says_where_it_computes_naming_the_gpu(machine):
    machine(cuda=[(8, 9)], cpu=CPUS["Zen 4 (AVX512-BF16)"])
    assert (placement(CUDA, pick_dtype("auto", CUDA), "auto")
            == "cuda:0 (NVIDIA L4, compute capability 8.9; picked by train.device: auto) with bf16 autocast")
    assert placement(torch.device("cuda", 0), None, "cuda") == "cuda:0 (NVIDIA L4, compute capability 8.9) in fp32"
    assert placement(CPU, pick_dtype("auto", CPU), "auto") == "cpu (picked by train.device: auto) with bf16 autocast"
    assert placement(CPU, None, "cpu") == "cpu in fp32"


def test_mps_trains_in_fp32(machine):
    machine(mps=True)
    assert not native_bf16(MPS) and pick_dtype("auto", MPS) is None and pick_dtype("fp32", MPS) is None


def test_asking_for_bf16_where_it_would_be_emulated_is_one_line_naming_param_and_device(machine):
    machine(cuda=[(7, 5)], cpu=CPUS["Ice Lake (AVX-512, no BF16)"])
    for device, named in ((CUDA, r"cuda:0 \(Tesla T4, compute capability 7\.5\) would only emulate it"),
                          (CPU, "cpu would only emulate it"), (MPS, "mps can't be checked for native bf16")):
        with pytest.raises(ParamError) as error:
            pick_dtype("bf16", device)
        message = str(error.value)
        assert "\n" not in message
        assert re.match(rf"train\.precision: bf16 was asked for but {named} \(.*\); use 'auto' or 'fp32'$", message)
    machine(cuda=[(8, 0)], cpu=CPUS["Zen 4 (AVX512-BF16)"])
    assert pick_dtype("bf16", CUDA) == pick_dtype("bf16", CPU) == torch.bfloat16


def test_configure_turns_tf32_off_and_cudnn_autotuning_on_for_cuda():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.allow_tf32, cudnn.benchmark, matmul.allow_tf32
    cudnn.benchmark, cudnn.allow_tf32 = False, True  # torch's defaults: cuDNN's fp32 convolutions in TF32
    try:
        configure(CPU)
        assert not cudnn.allow_tf32 and not matmul.allow_tf32 and not cudnn.benchmark
        configure(CUDA)
        assert cudnn.benchmark and not cudnn.allow_tf32 and not matmul.allow_tf32
        # inductor reads the legacy flags: they stay readable (mixing the two APIs makes torch refuse)
        assert cudnn.conv.fp32_precision != "tf32"
    finally:
        cudnn.allow_tf32, cudnn.benchmark, matmul.allow_tf32 = before


def test_nproc_more_processes_than_gpus_or_several_on_mps_is_one_line_saying_what_to_do(machine):
    machine(cuda=[(8, 0), (8, 0)], mps=True)
    for nproc in (1, 2):
        check_nproc(nproc, CUDA)
    for nproc in (1, 3, 64):
        check_nproc(nproc, CPU)
    check_nproc(1, MPS)
    with pytest.raises(ParamError, match=r"^train\.nproc: got 3, but this machine has 2 CUDA GPUs and each process "
                                         r"trains on one of its own; use at most 2, or train\.device: cpu to train "
                                         r"with 3 CPU processes$"):
        check_nproc(3, CUDA)
    with pytest.raises(ParamError, match=r"^train\.nproc: got 2, but mps trains as one process \(.*\); use 1, or "
                                         r"train\.device: cpu to train with 2 CPU processes$"):
        check_nproc(2, MPS)


def test_torchrun_launched_with_more_processes_than_gpus_fails_before_set_device(machine, monkeypatch):
    machine(cuda=[(8, 0)])
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail("set_device was called"))
    for name, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ParamError, match=r"^torchrun --nproc_per_node: got 2, but this machine has 1 CUDA GPU and"):
        distributed.init_distributed(CUDA)


@pytest.mark.parametrize(("overrides", "gpus", "expected"), [
    ({"device": "cuda", "nproc": 4}, [(8, 0)], r"^train\.nproc: got 4, but this machine has 1 CUDA GPU"),
    ({"device": "auto", "nproc": 2}, [], r"^train\.nproc: got 2, but mps trains as one process"),
    ({"device": "cuda", "nproc": 2, "precision": "bf16"}, [(7, 0), (7, 0)],
     r"^train\.precision: bf16 was asked for but cuda:0 \(Tesla V100-SXM2-16GB, compute capability 7\.0\) would"),
    ({"device": "cpu", "nproc": 1, "precision": "bf16"}, [], r"^train\.precision: bf16 was asked for but cpu would"),
])
def test_the_train_stage_says_so_before_any_work_or_process(machine, monkeypatch, tmp_path, overrides, gpus, expected):
    """The stage stops before it reads its lock or data, and before torchrun starts anything."""
    machine(cuda=gpus, mps=True, cpu=CPUS["Ice Lake (AVX-512, no BF16)"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(overrides)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # no data, no lock: reading either would be another error
    monkeypatch.setattr("sys.argv", ["train.py", "data/prepared", "m.pt", "c.pt", "live", "s.json", "lock.txt"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    stage = runpy.run_path(str(ROOT / "stages/train.py"), run_name="stage")
    monkeypatch.setitem(stage["main"].__globals__, "relaunch_under_torchrun",
                        lambda *a: pytest.fail("torchrun was started"))
    with pytest.raises(ParamError, match=expected):
        stage["main"]()


def test_the_evaluate_stage_reads_no_train_params_and_scores_on_the_cpu():
    assert device_module.SCORING_DEVICE == CPU
    stage = (ROOT / "stages/evaluate.py").read_text()
    assert "SCORING_DEVICE" in stage and "train." not in stage and "dtype" not in stage
