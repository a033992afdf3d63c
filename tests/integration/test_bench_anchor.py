"""bench/bench_anchor.py on a tiny size, so that it cannot rot (the figures come from
`make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_anchoring_benchmark_runs_and_writes_its_results(tmp_path) -> None:
    out = tmp_path / "anchor.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_anchor.py"), "--sizes", "4,7",
                          "--checkpoints", "2", "--verify-rounds", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1].startswith("headline: ")
    report = json.loads(out.read_text())
    assert [r["validators"] for r in report["results"]] == [4, 7]
    assert all(r["gas_steady"] > 21000 for r in report["results"])
    assert report["verify_one_decision_ms"]["evm"] > 0
