"""Smoke test of the benchmark on tiny data: the table's shape, not its figures (no timings asserted).

It trains through the stages' own commands, in subprocesses.
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from helpers import ROOT
from helpers.data import TINY_PARAMS, write_raw


def test_bench_writes_a_row_per_contender_with_every_seed(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=200, n_test=60, gz=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "bench/bench.py"), "--raw", str(raw), "--params",
                           str(tmp_path / "params.yaml"), "--out", str(out), "--seeds", "0", "1",
                           "--profiles", "fast", "--reference-epochs", "1"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.with_suffix(".json").read_text())
    rows = result["rows"]
    assert [r["name"] for r in rows] == ["reference", "fast"]  # one profile: the others run the same code
    assert [r["runs"] for r in rows] == [1, 2]
    assert [len(r["test_accuracies"]) for r in rows] == [1, 2]
    for row in rows:
        assert row["train_seconds"] > 0 and row["peak_rss_mib"] > 0 and row["images_per_second"] > 0
        assert all(0 <= a <= 1 for a in row["test_accuracies"])
        assert row["test_accuracy_min"] == min(row["test_accuracies"])
        assert list(row["seconds_to"]) == ["0.89", "0.94", "0.945"]  # on tiny data mostly None: not reached
    assert rows[0]["evaluate_seconds"] is None
    for row in rows[1:]:  # the profiles ran both stages as subprocesses
        assert row["evaluate_seconds"] > 0
        assert row["train_evaluate_seconds"] == row["train_seconds"] + row["evaluate_seconds"]
    table = out.with_suffix(".md").read_text().splitlines()
    header = [cell.strip() for cell in table[0].split("|")[1:-1]]
    assert header[:3] == ["run", "seeds", "test acc per seed (%)"] and len(header) == 15
    assert header[8:11] == ["time to 89% (s)", "time to 94% (s)", "time to 94.5% (s)"]
    assert all(len(line.split("|")) == len(table[0].split("|")) for line in table[1:4])
    assert [line.split("|")[1].strip() for line in table[2:4]] == ["reference", "fast"]
    assert len(table[3].split("|")[3].split()) == 2  # both seeds' accuracies listed


def test_step_time_gives_a_row_per_net_dtype_and_thread_count():
    proc = subprocess.run([sys.executable, str(ROOT / "bench/step_time.py"), "--nets", "cnn3_small", "lenet",
                           "--dtypes", "bf16", "fp32", "--threads", "1", "--steps", "2", "--peak-size", "256"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines()[2:]]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("cnn3_small", "bf16"), ("lenet", "bf16"),
                                                             ("cnn3_small", "fp32"), ("lenet", "fp32")]
    for row in rows:
        step_ms, gflop, achieved, peak = (float(cell) for cell in row[3:7])
        assert gflop > 0 and step_ms > 0
        assert abs(achieved - gflop / (step_ms / 1e3)) <= 0.01 * achieved + 1  # FLOP/s = FLOPs / step time
        assert abs(float(row[7].strip().rstrip("%")) - 100 * achieved / peak) <= 1  # the share of the peak
    # cnn3_small does more work a step than the tutorial's LeNet
    assert float(rows[0][4]) > float(rows[1][4])
