"""Builders the tests share: tiny IDX data, scratch copies of the pipeline, damaged files,
interrupted runs, torchrun launches, pictures and a tiny model file, import maps. What
only one test file uses stays in that file.

    folder = write_raw(tmp_path / "raw")            # four tiny gzipped IDX files
    repo = make_repo(tmp_path / "repo", folder)     # the pipeline in its own git repo
    repo.dvc("repro")
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import strategies as st
from PIL import Image

from fmnist.core.dataset import CLASSES
from fmnist.model.device import to_device_layout
from fmnist.training.environment import describe
from fmnist.model.nets import build_model
from fmnist.model.model_file import save_model
from fmnist.training.loop import Settings, TrainState, seed_everything, train_epoch

ROOT = Path(__file__).resolve().parents[1]

RAW_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Small settings that still exercise every code path of the pipeline.
TINY_PARAMS = {
    "data": {"val_size": 60},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "device": "cpu"},
    "evaluate": {"batch_size": 64, "misclassified": 6},
}


def train_params(**overrides) -> dict:
    """params.yaml's train section for a quick CPU run (fp32, lr 0.05), with `overrides`."""
    train = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    return {**train, "device": "cpu", "precision": "fp32", "lr": 0.05, **overrides}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Encode a uint8 array as an IDX file."""
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images a small net can learn in a few steps: class k lights up band k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k: 4 + 2 * k, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def tiny(n: int = 256, seed: int = 0):
    """synthetic(n, seed) as tensors: uint8 images (n, 28, 28) and int64 labels."""
    images, labels = synthetic(n, seed)
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def write_raw(folder: Path, n_train: int = 400, n_test: int = 120, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic(n, seed)
        for name, data in zip(RAW_NAMES[split], (idx_bytes(images, 2051), idx_bytes(labels, 2049))):
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (folder / name).write_bytes(data)
    return folder


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
    return hashlib.md5(path.read_bytes()).hexdigest()


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


# --- a pipeline that fails or is interrupted ------------------------------------------

# With 1600 training images, time to interrupt a run mid-way.
SLOW = {"train": {"epochs": 6, "batch_size": 16}}


def assert_clean_failure(proc, *expected: str) -> None:
    """A non-zero exit whose stderr says each of `expected`, without a traceback."""
    assert proc.returncode != 0
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays
    # ignored across exec: give `dvc repro` (and so the stage) Ctrl-C as a terminal has it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_repro(repo: Repo) -> subprocess.Popen:
    """`dvc repro` in a process group of its own (os.killpg signals it as a terminal's Ctrl-C
    or a CI runner does), its output in proc.stdout."""
    return subprocess.Popen([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=repo.path, env=repo.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)


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
    return [sys.executable, "-m", "torch.distributed.run", *flags, "stages/train.py", "data/prepared", *outputs, RUNTIME_LOCK]


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


# --- pictures and a model: unit/test_images.py, test_predict.py, e2e/test_product.py ---

def encode(pixels: torch.Tensor, kind: str, **options) -> bytes:
    """uint8 (H, W) grey or (3, H, W) colour pixels as a picture file's bytes (Pillow)."""
    array = (pixels if pixels.ndim == 2 else pixels.permute(1, 2, 0)).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind, **options)
    return buffer.getvalue()


def png(pixels: torch.Tensor) -> bytes:
    return encode(pixels, "PNG")


def webp(pixels: torch.Tensor) -> bytes:
    return encode(pixels, "WEBP", quality=90)


def jpeg(pixels: torch.Tensor) -> bytes:
    return encode(pixels, "JPEG", quality=95)


def enlarge(image: torch.Tensor, factor: int = 5, size: tuple[int, int] = (150, 200)) -> torch.Tensor:
    """`image` scaled up `factor` times and centred on a dark (H, W) = `size` canvas."""
    big = image.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    canvas = torch.zeros(size, dtype=torch.uint8)
    top, left = (size[0] - big.shape[0]) // 2, (size[1] - big.shape[1]) // 2
    canvas[top:top + big.shape[0], left:left + big.shape[1]] = big
    return canvas


def colour(image: torch.Tensor) -> torch.Tensor:
    """A tinted RGB version of a grey image (3, H, W)."""
    return torch.stack([image, (image * 0.9).to(torch.uint8), (image * 0.7).to(torch.uint8)])


def write_pictures(folder: Path, n: int = 4, seed: int = 7) -> dict[Path, str]:
    """n generated garments, each in the four variants; {path: true class name}."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic(n, seed)
    truth = {}
    for i, (image, label) in enumerate(zip(torch.from_numpy(images), labels)):
        pictures = {
            f"{i}-stored.png": png(image),
            f"{i}-inverted.webp": webp(255 - image),
            f"{i}-enlarged.jpg": jpeg(enlarge(image)),
            f"{i}-colour.png": png(colour(image)),
        }
        for name, data in pictures.items():
            (folder / name).write_bytes(data)
            truth[folder / name] = CLASSES[label]
    return truth


def write_model_file(path: Path) -> Path:
    """A cnn trained for a few epochs on generated images, saved as the train stage saves it."""
    cpu = torch.device("cpu")
    seed_everything(0)
    net = build_model("cnn")
    x, y = (torch.from_numpy(a) for a in synthetic(400, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    state = TrainState(net, to_device_layout(net, cpu), opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0), None)
    settings = Settings(epochs=3, batch_size=32, seed=0, augment=True, shift=0, erase=0.0, label_smoothing=0.1,
                        device=cpu, dtype=None, progress_bar=False)
    for epoch in (1, 2, 3):
        train_epoch(state, x, y.long(), epoch, settings)
    save_model(path, net.state_dict(), params={"model": "cnn", "epochs": 3}, epoch=3, val_acc=0.95,
               data_sha256="ab" * 32, environment=describe(ROOT / RUNTIME_LOCK))
    return path


# --- import maps ------------------------------------------------------------------

def imports(path: Path, root: Path = ROOT) -> set[str]:
    """The project's modules (paths relative to `root`) that `path` imports, followed transitively.

    Every import statement counts, a function's own included: what a stage may import
    at any point of its run.
    """
    seen: set[str] = set()
    todo = [path]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        for name in names:
            parts = name.split(".")
            candidates = [root / (name.replace(".", "/") + ".py"), root / "stages" / f"{name}.py"]
            if parts[0] == "fmnist":  # importing fmnist.a.b runs fmnist/__init__.py and fmnist/a/__init__.py
                candidates += [root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
            for file in candidates:
                rel = str(file.relative_to(root))
                if file.is_file() and rel not in seen:
                    seen.add(rel)
                    todo.append(file)
    return seen


# --- damaged files ------------------------------------------------------------

def one_line(message: str, *expected: str) -> None:
    """`message` is one line, no traceback, and says each of `expected`."""
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for text in expected:
        assert text in message, message


def leaves(node, path=()):
    """Every place a value sits in a nest of dicts and lists (a model file, a checkpoint), as a path of keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, path + (i,))
    if path:
        yield path


def put_junk(data, nest) -> tuple:
    """Replace one value of `nest`, at a place hypothesis draws, with JUNK; the place's path."""
    where = data.draw(st.sampled_from(sorted(leaves(nest), key=str)))
    node = nest
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = data.draw(JUNK)
    return where


# What a damaged file may hold in any one place.
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.floats(allow_nan=True), st.text(max_size=3),
                 st.lists(st.integers(), max_size=2), st.just({}),
                 st.builds(torch.zeros, st.lists(st.integers(0, 3), max_size=3).map(tuple)))


def file_size_limit(limit: int):
    """Writes past `limit` bytes fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    return apply


# --- sweeps: unit/test_study.py, test_sweep_report.py ---

def optuna_trial(number: int, state=None, value=None, **attrs):
    """A finished trial of a sweep over train.lr, as the study records it (unit/test_study.py, test_sweep_report.py)."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from fmnist.sweep.study import EXPERIMENT

    state = TrialState.COMPLETE if state is None else state
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                     params={"train.lr": 0.1 + number / 100}, distributions={"train.lr": FloatDistribution(0.01, 1)},
                     user_attrs={EXPERIMENT: f"sweep-{number}", **attrs},
                     intermediate_values={1: value} if value is not None else None)
    t.number = number
    return t
