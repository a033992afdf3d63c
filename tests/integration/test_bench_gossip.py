"""bench/bench_gossip.py on a tiny size, so that it cannot rot (the figures come from
`make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_gossip_benchmark_runs_and_writes_its_results(tmp_path) -> None:
    out = tmp_path / "gossip.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gossip.py"), "--sizes", "4", "--seconds", "1",
                          "--out", str(out)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1].startswith("headline: ")
    (row,) = json.loads(out.read_text())["results"]
    assert row["n"] == 4
    assert row["latency_samples"] > 0 and row["latency_p50_ms"] > 0
    assert row["delivered_per_s"] > 0
