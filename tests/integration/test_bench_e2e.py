"""bench/bench_e2e.py on a tiny size (real model, 2 motions), so that it cannot rot
(the figures come from a default-size run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_end_to_end_benchmark_runs_and_writes_its_results(tmp_path) -> None:
    out = tmp_path / "e2e.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "--validators", "4",
                          "--motions", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1].startswith("headline: ")
    report = json.loads(out.read_text())
    [result] = report["results"]
    assert result["motions"] == 2
    assert result["motions_per_s"] > 0
    split = result["split_s"]
    assert set(split) == {"inference", "waiting", "consensus", "storage"}
    assert all(v >= 0 for v in split.values()), split
    assert split["inference"] > 0
