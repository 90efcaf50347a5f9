"""Smoke test of the benchmark on tiny data: the table's shape, not its figures."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import ROOT, TINY_PARAMS, write_raw


def test_bench_writes_a_row_per_contender(tmp_path):
    raw = write_raw(tmp_path / "raw", n_train=200, n_test=60, gz=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "bench"
    subprocess.run([sys.executable, str(ROOT / "bench/bench.py"), "--raw", str(raw), "--params",
                    str(tmp_path / "params.yaml"), "--out", str(out), "--seeds", "0", "1",
                    "--reference-epochs", "1"], check=True, cwd=tmp_path, capture_output=True, text=True)
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["name"] for r in result["rows"]] == ["reference", "default", "fast"]
    assert [r["runs"] for r in result["rows"]] == [1, 2, 2]
    for row in result["rows"]:
        assert row["wall_seconds"] > 0 and row["images_per_second"] > 0 and row["peak_rss_mib"] > 0
        assert 0 <= row["final_test_accuracy"] <= 1
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0].startswith("| run |") and len(table[0].split("|")) == 12
    assert [line.split("|")[1].strip() for line in table[2:5]] == ["reference", "default", "fast"]
