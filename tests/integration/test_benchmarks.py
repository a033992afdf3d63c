"""Every benchmark in bench/ on a tiny size, so that none can rot (the figures come from
`make bench`). Each must exit 0, end with its headline and write its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, out: Path, *args: str, timeout: float = 300) -> dict:
    res = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)],
                         capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1].startswith("headline: ")
    return json.loads(out.read_text())


def test_the_simulation_benchmark(tmp_path: Path) -> None:
    report = run_bench("bench_consensus.py", tmp_path / "c.json", "--sizes", "4,7", "--heights", "2")
    assert [r["n"] for r in report["results"]] == [4, 7]
    assert all(r["heights"] >= 2 and r["wall s/height"] > 0 for r in report["results"])


def test_the_ballot_benchmark(tmp_path: Path) -> None:
    report = run_bench("bench_ballot.py", tmp_path / "b.json", "--rounds", "1", "--motions", "1")
    assert set(report["median_ms"]) == {"cached", "uncached", "raw"}
    assert all(v > 0 for v in report["median_ms"].values())


def test_the_agreement_benchmark(tmp_path: Path) -> None:
    report = run_bench("bench_agreement.py", tmp_path / "a.json", "--sizes", "4", "--motions", "2",
                       "--gossip-seconds", "1")
    (row,) = report["results"]
    assert row["n"] == 4 and len(row["latencies_ms"]) == 2
    assert 0 < row["p50_ms"] <= row["p99_ms"] and row["gossip_p50_ms"] > 0
    assert row["ratio_p50"] == pytest.approx(row["p50_ms"] / row["gossip_p50_ms"], rel=1e-2)
    # from the reveals is a later start than from the commitments: shorter, never longer
    assert 0 < row["from_reveal_p50_ms"] <= row["p50_ms"]


def test_the_throughput_benchmark(tmp_path: Path) -> None:
    report = run_bench("bench_throughput.py", tmp_path / "t.json", "--sizes", "4", "--motions", "40",
                       "--rate", "40")
    (row,) = report["results"]
    assert row["n"] == 4 and row["motions"] == 40
    assert row["motions_per_s"] > 0 and row["heights"] >= 1
    assert row["envelopes_per_motion"] > 0 and 0 < row["frames_per_motion"] <= row["envelopes_per_motion"]
