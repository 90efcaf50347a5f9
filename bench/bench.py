"""Benchmark: the PyTorch tutorial's training setup against this project's, side by side.

    make bench                      # = dvc repro download, then:
    python bench/bench.py --raw data/raw --out reports/bench --seeds 0 1 2

Trains, one after the other, each in its own process (so peak memory is its own):
- `reference`: PyTorch's "Training with PyTorch" tutorial rebuilt faithfully: LeNet-style
  net, batch size 4, SGD lr 0.001 momentum 0.9, torchvision's FashionMNIST dataset with
  ToTensor and Normalize((0.5,), (0.5,)) through a shuffled DataLoader, 5 epochs, on the
  full 60,000 training images;
- each profile in PROFILES: the project's own training path (fmnist.training's
  train_epoch and evaluate, as stages/train.py calls them) with params.yaml plus the
  profile's overrides, once per seed; the model is the epoch best on the validation set.

After every epoch the clock stops while the test set is scored, to find when test
accuracy first reaches TARGET; the test figures are only read for the table, nothing
is chosen on them. Writes OUT.json and OUT.md (a Markdown table with ratios against the
reference).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from fmnist.data import RAW_FILES, split_train_val
from fmnist.files import read_raw_split
from fmnist.model import build_model
from fmnist.training import build, evaluate, fit, pick_device, pick_dtype

TARGET = 0.89
# The documented profiles (README, "Profiles"): overrides of params.yaml's train section.
PROFILES = {
    "default": {},
    "fast": {"epochs": 3},
}


def load_raw(raw: Path) -> dict[str, torch.Tensor]:
    out = {}
    for split in ("train", "test"):
        out[f"{split}_images"], out[f"{split}_labels"] = read_raw_split(raw, split)
    return out


def run_reference(raw: Path, epochs: int = 5) -> dict:
    """The tutorial's loop, as written there (only the test scoring is added, off the clock)."""
    import torchvision
    import torchvision.transforms as transforms

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "FashionMNIST" / "raw"  # the layout torchvision's dataset reads
        folder.mkdir(parents=True)
        for name in RAW_FILES.values():
            (folder / name).symlink_to((raw / name).resolve())
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
        training_set = torchvision.datasets.FashionMNIST(root, train=True, transform=transform, download=False)
        validation_set = torchvision.datasets.FashionMNIST(root, train=False, transform=transform, download=False)
        training_loader = torch.utils.data.DataLoader(training_set, batch_size=4, shuffle=True)
        validation_loader = torch.utils.data.DataLoader(validation_set, batch_size=4, shuffle=False)

        model = build_model("lenet")
        loss_fn = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
        clock, curve = 0.0, []
        for _ in range(epochs):
            t0 = time.perf_counter()
            model.train(True)
            for inputs, labels in training_loader:
                optimizer.zero_grad()
                outputs = model(inputs)
                loss = loss_fn(outputs, labels)
                loss.backward()
                optimizer.step()
            clock += time.perf_counter() - t0
            model.eval()
            correct = 0
            with torch.no_grad():
                for inputs, labels in validation_loader:
                    correct += (model(inputs).argmax(1) == labels).sum().item()
            curve.append((clock, correct / len(validation_set)))
    return {"train_seconds": clock, "images": epochs * len(training_set), "curve": curve,
            "final_test_accuracy": curve[-1][1]}


def run_profile(raw: Path, params: dict, overrides: dict, seed: int) -> dict:
    """The train stage's own training (fmnist.training.fit), with the test set scored every
    CHECK_EVERY steps while the clock is stopped; the model is the epoch best on validation."""
    p = {**params["train"], **overrides, "seed": seed}
    data = load_raw(raw)
    train_idx, val_idx = split_train_val(len(data["train_labels"]), params["data"]["val_size"], params["data"]["seed"])
    device = pick_device(p["device"])
    dtype = pick_dtype(p["precision"], device)
    train = data["train_images"][train_idx].to(device), data["train_labels"][train_idx].to(device)
    val = data["train_images"][val_idx].to(device), data["train_labels"][val_idx].to(device)
    test = data["test_images"], data["test_labels"]
    clock = {"start": time.perf_counter(), "paused": 0.0}
    curve, at_epoch = [], {}

    def score(epoch: int, step: int) -> None:  # off the clock
        t = time.perf_counter()
        result = evaluate(net, *test, device=device, batch_size=params["evaluate"]["batch_size"],
                          tta=params["evaluate"]["tta"], dtype=dtype)
        curve.append((t - clock["start"] - clock["paused"], result.accuracy))
        at_epoch[epoch] = result.accuracy
        clock["paused"] += time.perf_counter() - t

    net, model, optimizer, scheduler = build(p, len(train[1]), device)
    progress = fit(p, net, model, optimizer, scheduler, train, val, device=device, dtype=dtype, on_step=score,
                   show_progress=False)
    seconds = time.perf_counter() - clock["start"] - clock["paused"]
    return {"train_seconds": seconds, "images": p["epochs"] * len(train[1]), "curve": curve,
            "final_test_accuracy": at_epoch[progress.best["epoch"]]}


def one(args) -> None:
    """Run one contender in this process and print its figures as JSON."""
    params = yaml.safe_load(Path(args.params).read_text())
    if args.one == "reference":
        result = run_reference(Path(args.raw), epochs=args.reference_epochs)
    else:
        result = run_profile(Path(args.raw), params, PROFILES[args.one], args.seed)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def summarize(name: str, runs: list[dict]) -> dict:
    reach = [next((t for t, acc in r["curve"] if acc >= TARGET), None) for r in runs]
    reached = [t for t in reach if t is not None]
    return {
        "name": name,
        "runs": len(runs),
        "wall_seconds": statistics.mean(r["train_seconds"] for r in runs),
        "images_per_second": statistics.mean(r["images"] / r["train_seconds"] for r in runs),
        # Only when every run got there; otherwise the target was not reliably met.
        "seconds_to_target": statistics.mean(reached) if len(reached) == len(runs) else None,
        "final_test_accuracy": statistics.mean(r["final_test_accuracy"] for r in runs),
        "final_test_accuracies": [r["final_test_accuracy"] for r in runs],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
    }


def ratio(ref: float | None, value: float | None) -> str:
    return f"{ref / value:.1f}x" if ref and value else "n/a"


def markdown(rows: list[dict]) -> str:
    ref = rows[0]
    lines = [
        f"| run | seeds | train time (s) | images/s | time to {TARGET:.0%} test acc (s) | final test acc "
        f"| peak RSS (MiB) | speed-up (images/s) | sooner to {TARGET:.0%} | less wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        to_target = f"{r['seconds_to_target']:.1f}" if r["seconds_to_target"] is not None else "not reached"
        lines.append(
            f"| {r['name']} | {r['runs']} | {r['wall_seconds']:.1f} | {r['images_per_second']:.0f} | {to_target} "
            f"| {r['final_test_accuracy']:.4f} | {r['peak_rss_mib']:.0f} "
            f"| {r['images_per_second'] / ref['images_per_second']:.1f}x "
            f"| {ratio(ref['seconds_to_target'] or ref['wall_seconds'], r['seconds_to_target'])} "
            f"| {ratio(ref['wall_seconds'], r['wall_seconds'])} |")
    if ref["seconds_to_target"] is None:
        lines.append(f"\nThe reference never reached {TARGET:.0%}: 'sooner' compares with its whole run.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default="data/raw", help="folder of the four uncompressed IDX files")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="reports/bench", help="writes OUT.json and OUT.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--reference-epochs", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args)

    def child(name: str, seed: int = 0) -> dict:
        cmd = [sys.executable, __file__, "--one", name, "--seed", str(seed), "--raw", args.raw,
               "--params", args.params, "--reference-epochs", str(args.reference_epochs)]
        print(f"running {name} (seed {seed})...", flush=True)
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=os.environ).stdout
        return json.loads(out.strip().splitlines()[-1])

    rows = [summarize("reference", [child("reference")])]
    for name in args.profiles:
        rows.append(summarize(name, [child(name, seed) for seed in args.seeds]))
    table = markdown(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "target": TARGET, "profiles": copy.deepcopy(PROFILES)}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
