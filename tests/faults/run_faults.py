"""`make faults`: the long versions of the hostile-conditions suite (issue 8), one row
each: scenario, runs, decisions, safety violations, liveness failures, the longest
catch-up, and inputs rejected. Exits 1 if any row has a safety violation or a
liveness failure (or its scenario could not run).

    python -m tests.faults.run_faults [--only NAME,...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.faults import crash_loop, flood_run, fuzz_gate

ROOT = Path(__file__).resolve().parents[2]
FUZZ_SEEDS = (1, 2)
FUZZ_INPUTS = 100_000  # per seed
ATHERIS_RUNS = 100_000
CRASH_KILLS = 20
FLOOD_RUNS = 3
FLOOD_SECONDS = 20.0
FLOOD_MOTIONS = 3


@dataclass
class Row:
    scenario: str
    runs: int
    decisions: int | None = None
    safety_violations: int = 0
    liveness_failures: int = 0
    max_catch_up_s: float | None = None
    rejected_inputs: int | None = None
    detail: str = ""
    skipped: str = ""  # why it could not run on this machine (not a failure)


def bad_bytes_mutation() -> Row:
    runs = rejected = 0
    for seed in FUZZ_SEEDS:
        report = fuzz_gate.run(FUZZ_INPUTS, seed)  # raises FuzzFailure, with its replay command
        runs += report.inputs
        rejected += sum(report.rejected.values())
    return Row("bad bytes: mutated messages", runs, rejected_inputs=rejected,
               detail=f"seeds {FUZZ_SEEDS}, {FUZZ_INPUTS} inputs each")


def bad_bytes_atheris() -> Row:
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "faults" / "atheris_gate.py"),
                          f"-atheris_runs={ATHERIS_RUNS}"], capture_output=True, text=True, cwd=ROOT, timeout=1800)
    done = re.search(r"Done (\d+) in", res.stderr)
    if res.returncode != 0 or done is None:
        return Row("bad bytes: coverage-guided (atheris)", 0, safety_violations=1, detail=res.stderr[-2000:])
    cov = re.findall(r"cov: (\d+)", res.stderr)
    return Row("bad bytes: coverage-guided (atheris)", int(done.group(1)),
               detail=f"coverage {cov[-1] if cov else '?'} edges")


def crashes() -> Row:
    with tempfile.TemporaryDirectory(prefix="faults-crash-") as tmp:
        report = crash_loop.run_crash_loop(Path(tmp), CRASH_KILLS, seed=1)
    return Row("crashes: SIGKILL a validator, restart", report.kills, report.decisions,
               len(report.safety_violations), len(report.liveness_failures),
               max(report.catch_up_s, default=None), report.rejected,
               detail="; ".join(report.safety_violations + report.liveness_failures)[:2000])


def floods() -> Row:
    decisions = liveness = safety = rejected = 0
    details, rates, peaks = [], [], []
    for _ in range(FLOOD_RUNS):
        with tempfile.TemporaryDirectory(prefix="faults-flood-") as tmp:
            report = flood_run.run_floods(Path(tmp), FLOOD_SECONDS, FLOOD_MOTIONS, say=lambda _: None)
        decisions += min(FLOOD_MOTIONS - len(u) for u in report.undecided.values())
        liveness += sum(len(u) for u in report.undecided.values())
        problems = report.problems()
        # Banning an honest peer, or memory past the bound, is not a lost decision but
        # is a failure of the defence: counted with the safety column so it fails the run.
        safety += len([p for p in problems if "did not decide" not in p])
        rejected += sum(report.rejected.values()) + sum(report.screened.values())
        details += problems
        rates.append(sum(report.per_s.values()))
        peaks.append(max(peak for _, peak in report.rss_mb.values()))
    return Row(f"floods: a member and a stranger, {FLOOD_SECONDS:g} s", FLOOD_RUNS, decisions, safety, liveness,
               rejected_inputs=rejected,
               detail="; ".join(details) or f"flood {min(rates)}-{max(rates)} msg/s, peak RSS {max(peaks)} MB")


def pytest_scenario(name: str, path: str, repeat: int = 1) -> Callable[[], Row]:
    """A scenario whose long version is its short one (a pytest file) run ``repeat``
    times; a failed test counts as a safety violation (it asserts safety first)."""
    def run() -> Row:
        passed = failed = skipped = 0
        details = []
        for _ in range(repeat):
            res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", path],
                                 capture_output=True, text=True, cwd=ROOT, timeout=1800)
            passed += int(m.group(1)) if (m := re.search(r"(\d+) passed", res.stdout)) else 0
            failed += int(m.group(1)) if (m := re.search(r"(\d+) failed", res.stdout)) else 0
            skipped += int(m.group(1)) if (m := re.search(r"(\d+) skipped", res.stdout)) else 0
            if res.returncode != 0:
                details.append(res.stdout[-2000:])
        if skipped and not passed + failed:
            why = re.search(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", res.stdout)
            return Row(name, 0, skipped=why.group(1) if why else "skipped")
        return Row(name, passed + failed, safety_violations=failed + (1 if details and not failed else 0),
                   detail="\n".join(details))
    return run


SCENARIOS: dict[str, Callable[[], Row]] = {
    "fuzz": bad_bytes_mutation,
    "atheris": bad_bytes_atheris,
    "crashes": crashes,
    "byzantine": pytest_scenario("byzantine: a lying validator of 4", "tests/faults/test_byzantine.py", repeat=5),
    "disk": pytest_scenario("disk: torn log, tampered, read-only, full", "tests/faults/test_disk.py"),
    "floods": floods,
    "partitions": pytest_scenario("partitions: isolate, split 2/2, cut proposer", "tests/faults/test_partitions.py",
                                  repeat=2),
}

COLUMNS = (("scenario", 40), ("runs", 8), ("decisions", 10), ("safety violations", 18),
           ("liveness failures", 18), ("max catch-up s", 15), ("rejected inputs", 16))


def _cell(value, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:.1f}".rjust(width)
    return str(value).ljust(width) if isinstance(value, str) else str(value).rjust(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"scenarios, comma-separated, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = [c for c in chosen if c not in SCENARIOS]
    if unknown:
        parser.error(f"--only: unknown scenario {', '.join(unknown)} (known: {', '.join(SCENARIOS)})")
    rows = []
    for name in chosen:
        started = time.monotonic()
        print(f"running {name}...", flush=True)
        try:
            row = SCENARIOS[name]()
        except fuzz_gate.FuzzFailure as exc:
            row = Row(name, 0, safety_violations=1, detail=str(exc))
        rows.append(row)
        print(f"  {name}: {time.monotonic() - started:.0f} s", flush=True)
    print("| " + " | ".join(h for h, _ in COLUMNS) + " |")
    print("|" + "|".join("---" for _ in COLUMNS) + "|")
    for r in rows:
        values = (r.scenario, r.runs, r.decisions, r.safety_violations, r.liveness_failures, r.max_catch_up_s,
                  r.rejected_inputs)
        print("| " + " | ".join(_cell(v, w).strip() for v, (_, w) in zip(values, COLUMNS)) + " |")
    for r in rows:
        if r.skipped:
            print(f"- {r.scenario}: skipped here: {r.skipped}")
        elif r.detail and not (r.safety_violations or r.liveness_failures):
            print(f"- {r.scenario}: {r.detail}")
    for r in rows:
        if r.detail and (r.safety_violations or r.liveness_failures):
            print(f"\n{r.scenario}:\n{r.detail}")
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    bad = [r for r in rows if r.safety_violations or r.liveness_failures or (r.runs == 0 and not r.skipped)]
    print(f"{len(rows)} scenarios, {sum(r.runs for r in rows)} runs, "
          f"{sum(r.safety_violations for r in rows)} safety violations, "
          f"{sum(r.liveness_failures for r in rows)} liveness failures")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
