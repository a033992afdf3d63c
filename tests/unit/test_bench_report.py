"""bench/report.py on fixture results: the summary, the targets (met, not met, not
measured), summary.json / summary.md and the PNG figures."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "report.py"

_spec = importlib.util.spec_from_file_location("bench_report", SCRIPT)
report = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = report  # a dataclass looks its module up there
_spec.loader.exec_module(report)

FIGURES = ("agreement.png", "throughput.png", "e2e_split.png", "anchoring_gas.png", "simulation.png", "ballots.png")
TARGETS = (
    "agreement p50 at n=4 <= 4x one-hop gossip p50",
    "agreement p50 at n=16 < 1000 ms",
    "throughput at n=4 >= 200 motions/s",
    "throughput at n=16 >= 50 motions/s",
    "prefix-cached ballot <= 0.7x uncached",
)


# --------------------------------------------------------------------------- fixtures


def consensus() -> dict:  # no "headline": as bench_consensus.py writes it
    rows = [(4, 10.0, 30.0, 0.0055, 8762.8), (16, 33.0, 495.0, 0.0689, 8109.9),
            (64, 131.7, 8295.0, 0.7631, 10622.1), (100, 201.7, 19965.0, 1.9319, 10088.5)]
    return {"benchmark": "consensus core, one height in simulation", "machine": "x86_64", "seed": 1, "results": [
        {"n": n, "heights": 3, "steps": int(sps * wall * 3), "steps/s": sps, "msgs/height": msgs,
         "deliv/height": deliv, "virt ms/height": 38.0, "wall s/height": wall, "rounds/height": 1.0}
        for n, msgs, deliv, wall, sps in rows]}


def ballot(cached: float = 915.5, uncached: float = 1335.9, raw: float = 980.9) -> dict:  # no "headline"
    return {"benchmark": "ballot latency", "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "motions": 6, "rounds": 2,
            "median_ms": {"cached": cached, "uncached": uncached, "raw": raw},
            "ratio_uncached_over_cached": round(uncached / cached, 2), "ratio_raw_over_cached": round(raw / cached, 2),
            "median_prompt_tokens": 173.5, "median_generated_tokens": 37.0,
            "samples_ms": {"cached": [cached] * 3, "uncached": [uncached] * 3, "raw": [raw] * 3}}


def anchor() -> dict:  # no "headline"
    rows = [(4, 3, 165472, 171166, 25.1, 27.8), (7, 5, 181614, 187380, 25.3, 28.3),
            (16, 11, 230273, 235931, 38.9, 134.5)]
    return {"benchmark": "checkpoint anchoring on anvil", "heights_per_checkpoint": 8, "results": [
        {"validators": v, "signatures": s, "gas_first": first, "gas_steady": steady,
         "gas_per_signature": round(steady / s), "submit_to_receipt_ms_p50": p50, "submit_to_receipt_ms_p90": p90}
        for v, s, first, steady, p50, p90 in rows], "verify_one_decision_ms": {"evm": 13.27, "ledger": 0.31}}


def gossip() -> dict:
    return {"benchmark": "py-libp2p gossip", "headline": "light load p50 7.3 ms, p99 16.9 ms at n=4", "results": [
        {"n": 4, "latency_p50_ms": 7.3, "latency_p99_ms": 16.9, "delivered_per_s": 1959.8, "delivered_fraction": 0.87},
        {"n": 16, "latency_p50_ms": 21.4, "latency_p99_ms": 88.0, "delivered_per_s": 1210.0,
         "delivered_fraction": 0.8}]}


def agreement(p50_4: float = 24.0, gossip_4: float = 6.4, p50_16: float | None = 410.0) -> dict:
    rows = [{"n": 4, "motions": 10, "p50_ms": p50_4, "p99_ms": p50_4 * 1.4, "gossip_p50_ms": gossip_4,
             "gossip_p99_ms": 17.1, "ratio_p50": round(p50_4 / gossip_4, 3), "round_changes": 0}]
    if p50_16 is not None:
        rows.append({"n": 16, "motions": 10, "p50_ms": p50_16, "p99_ms": p50_16 * 1.6, "gossip_p50_ms": 21.4,
                     "gossip_p99_ms": 88.0, "ratio_p50": round(p50_16 / 21.4, 3), "round_changes": 1})
    return {"benchmark": "agreement latency", "headline": f"agreement p50 {p50_4:.0f} ms at n=4", "results": rows}


def throughput(at4: float = 240.0, at16: float = 61.0) -> dict:
    def row(n: int, rate: float, target: float) -> dict:
        return {"n": n, "motions": 400, "seconds": round(400 / rate, 2), "motions_per_s": rate,
                "envelopes_per_motion": 0.25, "frames_per_motion": 3.0 * n, "heights": 12,
                "resolutions_per_block": 33.3, "target_per_s": target, "target_met": rate >= target}
    return {"headline": f"{at4:.0f} motions/s at n=4, {at16:.0f} at n=16",
            "results": [row(4, at4, 200.0), row(16, at16, 50.0)]}


def e2e() -> dict:
    def row(n: int, rate: float, split: dict[str, float]) -> dict:
        total = sum(split.values())
        return {"n": n, "motions": 12, "seconds": round(12 / rate, 1), "motions_per_s": rate,
                "per_motion_p50_s": round(total, 3), "split_s": split,
                "split_share": {k: round(v / total, 3) for k, v in split.items()}}
    return {"headline": "0.9 motions/s at n=4, inference 78% of a motion", "results": [
        row(4, 0.9, {"inference": 0.92, "waiting": 0.11, "consensus": 0.12, "storage": 0.03}),
        row(16, 0.21, {"inference": 3.6, "waiting": 0.8, "consensus": 0.5, "storage": 0.06})]}


ALL = {"consensus": consensus, "ballot": ballot, "anchor": anchor, "gossip": gossip, "agreement": agreement,
       "throughput": throughput, "e2e": e2e}


def write(results: Path, **files: dict) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (results / f"{name}.json").write_text(json.dumps(data, indent=2))
    return results


def run(tmp_path: Path, capsys, **files: dict) -> tuple[list[str], dict, str, Path]:
    results, figures = write(tmp_path / "results", **files), tmp_path / "figures"
    assert report.main(["--results", str(results), "--figures", str(figures)]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads((results / "summary.json").read_text())
    return lines, summary, (results / "summary.md").read_text(), figures


def statuses(summary: dict) -> dict[str, str]:
    return {t["target"]: t["status"] for t in summary["targets"]}


def printed_status(lines: list[str], target: str) -> str:
    line = next(line for line in lines if line.startswith(target))
    return re.split(r"\s{2,}", line)[-1]


# --------------------------------------------------------------------------- tests


def test_every_benchmark_met_targets_and_figures(tmp_path, capsys) -> None:
    lines, summary, md, figures = run(tmp_path, capsys, **{name: make() for name, make in ALL.items()})

    assert lines[-1] == "headline: 7 benchmarks, 5 of 5 targets met"
    assert summary["headline"] == "7 benchmarks, 5 of 5 targets met"
    assert [b["name"] for b in summary["benchmarks"]] == list(ALL)  # the order of `make bench`
    assert list(statuses(summary)) == list(TARGETS)
    assert set(statuses(summary).values()) == {"met"}
    for target in TARGETS:
        assert printed_status(lines, target) == "met"
    # The measured values, in the summary and on stdout.
    by_name = {t["target"]: t for t in summary["targets"]}
    assert by_name[TARGETS[0]]["value"] == pytest.approx(24.0 / 6.4, abs=1e-3)
    assert by_name[TARGETS[1]]["value"] == 410.0
    assert by_name[TARGETS[2]]["value"] == 240.0 and "240.0 motions/s" in by_name[TARGETS[2]]["measured"]
    assert by_name[TARGETS[3]]["value"] == 61.0
    assert by_name[TARGETS[4]]["value"] == pytest.approx(915.5 / 1335.9, abs=1e-3)
    assert any("0.69x" in line and TARGETS[4] in line for line in lines)

    for name in FIGURES:
        data = (figures / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), name
        assert len(data) < 60_000, (name, len(data))
    assert sorted(p.name for p in figures.iterdir()) == sorted(FIGURES)

    assert "| target | measured | status |" in md
    for target in TARGETS:
        assert re.search(rf"^\| {re.escape(target)} \| .+ \| met \|$", md, re.M), target
    assert "| benchmark | headline |" in md
    assert "| throughput | 240 motions/s at n=4, 61 at n=16 |" in md


def test_headlines_come_from_the_file_or_are_derived(tmp_path, capsys) -> None:
    lines, summary, _, _ = run(tmp_path, capsys, **{name: make() for name, make in ALL.items()})
    headlines = {b["name"]: b["headline"] for b in summary["benchmarks"]}
    assert headlines["gossip"] == gossip()["headline"]
    assert headlines["agreement"] == "agreement p50 24 ms at n=4"
    # consensus, ballot and anchor files carry none: derived (anchor as bench_anchor.py prints it).
    assert headlines["consensus"].startswith("one height in simulation: 5.5 ms wall at n=4, 1.93 s at n=100")
    assert headlines["ballot"] == "prefix-cached ballot median 916 ms vs 1336 ms uncached (0.69x), raw llama-cpp 981 ms"
    assert headlines["anchor"] == ("235931 gas per checkpoint at 16 validators, 8096 gas per extra signature; "
                                   "submit-to-receipt p50 25.3 ms; verify one decision 13.3 ms")
    for name, text in headlines.items():
        assert any(line.startswith(name) and text in line for line in lines), name


def test_targets_not_met(tmp_path, capsys) -> None:
    lines, summary, md, _ = run(
        tmp_path, capsys, agreement=agreement(p50_4=221.5, gossip_4=6.4, p50_16=1450.0),
        throughput=throughput(at4=120.0, at16=30.5), ballot=ballot(cached=1100.0, uncached=1335.9))
    assert set(statuses(summary).values()) == {"NOT met"}
    for target in TARGETS:
        assert printed_status(lines, target) == "NOT met"
        assert re.search(rf"^\| {re.escape(target)} \| .+ \| NOT met \|$", md, re.M), target
    assert any("34.6x" in line for line in lines)
    assert lines[-1] == "headline: 3 benchmarks, 0 of 5 targets met"


def test_a_nan_in_a_result_is_not_a_measurement(tmp_path, capsys) -> None:
    data = throughput()
    data["results"][1]["motions_per_s"] = float("nan")  # json.dumps writes NaN, json.loads reads it
    data["results"][1]["target_per_s"] = float("nan")
    _, summary, _, figures = run(tmp_path, capsys, throughput=data)
    assert statuses(summary)[TARGETS[2]] == "met"
    assert statuses(summary)[TARGETS[3]] == "not measured"
    assert (figures / "throughput.png").read_bytes().startswith(b"\x89PNG")


def test_thresholds_at_their_edges(tmp_path, capsys) -> None:
    # <= 4x and >= 200/s, >= 50/s and <= 0.7x include the bound; < 1000 ms does not.
    _, summary, _, _ = run(tmp_path, capsys, agreement=agreement(p50_4=25.6, gossip_4=6.4, p50_16=1000.0),
                           throughput=throughput(at4=200.0, at16=50.0), ballot=ballot(cached=700.0, uncached=1000.0))
    assert list(statuses(summary).values()) == ["met", "NOT met", "met", "met", "met"]


def test_missing_results_are_not_measured(tmp_path, capsys) -> None:
    # No throughput.json, and agreement.json without an n=16 row.
    lines, summary, md, figures = run(tmp_path, capsys, consensus=consensus(), ballot=ballot(),
                                      agreement=agreement(p50_16=None))
    s = statuses(summary)
    assert s[TARGETS[0]] == "met" and s[TARGETS[4]] == "met"
    for target in TARGETS[1:4]:
        assert s[target] == "not measured"
        assert printed_status(lines, target) == "not measured"
        assert re.search(rf"^\| {re.escape(target)} \| - \| not measured \|$", md, re.M), target
    assert {t["target"]: t["value"] for t in summary["targets"]}[TARGETS[2]] is None
    assert lines[-1] == "headline: 3 benchmarks, 2 of 5 targets met"
    # Figures only for the results that exist.
    assert sorted(p.name for p in figures.iterdir()) == ["agreement.png", "ballots.png", "simulation.png"]
    for p in figures.iterdir():
        assert p.read_bytes().startswith(b"\x89PNG")


def test_no_results_at_all(tmp_path, capsys) -> None:
    lines, summary, md, figures = run(tmp_path, capsys)
    assert summary["benchmarks"] == []
    assert set(statuses(summary).values()) == {"not measured"}
    assert "| target | measured | status |" in md
    assert not figures.exists()
    assert lines[-1] == "headline: 0 benchmarks, 0 of 5 targets met"


def test_unreadable_and_unknown_files_do_not_stop_the_report(tmp_path, capsys) -> None:
    results = write(tmp_path / "results", ballot=ballot(), extra={"headline": "something else, measured"})
    (results / "throughput.json").write_text('{"results": [')  # cut short, e.g. by an interrupted run
    (results / "summary.json").write_text("{}")  # a previous report: not a benchmark
    assert report.main(["--results", str(results), "--figures", str(tmp_path / "figures")]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads((results / "summary.json").read_text())
    names = [b["name"] for b in summary["benchmarks"]]
    assert names == ["ballot", "extra", "throughput"]
    assert summary["benchmarks"][1]["headline"] == "something else, measured"
    assert summary["benchmarks"][2]["headline"].startswith("(unreadable: JSONDecodeError")
    assert statuses(summary)[TARGETS[2]] == "not measured"
    assert lines[-1] == "headline: 2 benchmarks, 1 of 5 targets met"


def test_runs_as_a_script_without_a_display(tmp_path) -> None:
    results = write(tmp_path / "results", ballot=ballot(), throughput=throughput())
    res = subprocess.run([sys.executable, str(SCRIPT), "--results", str(results), "--figures", str(tmp_path / "f")],
                         capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == "headline: 2 benchmarks, 3 of 5 targets met"
    assert (tmp_path / "f" / "throughput.png").read_bytes().startswith(b"\x89PNG")
