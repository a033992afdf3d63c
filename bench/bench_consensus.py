"""Cost of one height of the consensus core, in simulation, for growing validator sets.

Each size runs the same honest cluster (no faults, delays 1-20 ms, the simulation's
timeouts) for a few heights; signature verification dominates (about n^2 per height).

    python bench/bench_consensus.py [--sizes 4,16,64,100] [--heights 3] [--seed 1]

Prints a table and writes bench/results/consensus.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from consensus.sim import NetworkConfig, Simulation  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "consensus.json"
COLUMNS = (  # (name, width, format)
    ("n", 5, "d"), ("heights", 7, "d"), ("steps/s", 9, ".0f"), ("msgs/height", 11, ".1f"),
    ("deliv/height", 12, ".0f"), ("virt ms/height", 14, ".1f"), ("wall s/height", 13, ".3f"),
    ("rounds/height", 13, ".2f"),
)


def bench(n: int, heights: int, seed: int) -> dict[str, object]:
    sim = Simulation(n, 0, seed, heights, NetworkConfig())
    start = time.perf_counter()
    result = sim.run()
    wall = time.perf_counter() - start
    if not result.ok or result.heights_decided < heights:
        raise SystemExit(f"n={n}: the run failed: {result.safety_violations or result.liveness_failure}")
    return {
        "n": n, "heights": result.heights_decided, "steps": result.steps,
        "steps/s": result.steps / wall, "msgs/height": result.messages_per_height,
        "deliv/height": result.deliveries_per_height, "virt ms/height": result.virtual_ms / result.heights_decided,
        "wall s/height": wall / result.heights_decided, "rounds/height": result.rounds_per_height,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,16,64,100", help="validator counts, comma-separated")
    parser.add_argument("--heights", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(" ".join(name.rjust(width) for name, width, _ in COLUMNS))
    rows = []
    for n in sizes:
        row = bench(n, args.heights, args.seed)
        rows.append(row)
        print(" ".join(format(row[name], f">{width}{fmt}") for name, width, fmt in COLUMNS), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "consensus core, one height in simulation (honest, no faults, delays 1-20 ms)",
        "python": platform.python_version(), "machine": platform.machine(), "seed": args.seed,
        "results": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows],
    }
    first, last = rows[0], rows[-1]
    report["headline"] = (f"one height in simulation: {1000 * first['wall s/height']:.1f} ms wall at n={first['n']}, "
                          f"{last['wall s/height']:.2f} s at n={last['n']} ({last['msgs/height']:.0f} messages/height)")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    print(f"headline: {report['headline']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
