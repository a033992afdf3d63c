"""Agreement latency: from the moment a motion's ballots are available to its decision
at every peer, for growing swarms of separate `conclave peer` processes, beside the
one-hop gossip latency measured in the same run.

For each size n: first the gossip baseline (bench_gossip.measure_gossip, n hosts), then
a swarm of n validators with zero-cost ballots (``--model fixed``) on 127.0.0.1. Motions
are submitted one at a time, each once the previous one is decided everywhere, so none
waits behind another. For each motion:

- ready: the moment ballots holding more than 2/3 of the power exist, i.e. the q-th
  earliest ``ballot_committed`` among the validators (q validators of equal power);
- decided: the last ``agreement`` for it among all peers;
- latency = decided - ready. In between: commitments and reveals travel (2 message
  delays), then proposal, prevote, precommit (3, the floor of any BFT agreement), with
  the fsyncs each peer makes before it signs.
- also reported, from_reveal: decided - the q-th validator's reveal leaving it (the
  first ``ballots_sent`` of reveals after the motion arrived; one motion is in flight
  at a time, so it is this motion's). The ballots are public from then on; what is left
  is the reveal's one message delay and the three of agreement.

Timestamps come from the peers' JSON logs (millisecond resolution).

    python bench/bench_agreement.py [--sizes 4,7,10,16] [--motions 10]

Writes bench/results/agreement.json; the last line is the headline figure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_gossip import measure_gossip  # noqa: E402
from report import agreement_headline  # noqa: E402
from swarm_harness import (  # noqa: E402
    ROOT, MotionClient, bench_params, event_time, percentile, running_swarm, write_report,
)

RESULTS = ROOT / "bench" / "results" / "agreement.json"
DECIDE_TIMEOUT = 120.0
COLUMNS = (  # (header, key, width, format)
    ("n", "n", 4, "d"), ("motions", "motions", 8, "d"), ("p50 ms", "p50_ms", 9, ".1f"),
    ("p99 ms", "p99_ms", 9, ".1f"), ("gossip p50 ms", "gossip_p50_ms", 14, ".2f"),
    ("ratio p50", "ratio_p50", 10, ".1f"), ("from reveal p50", "from_reveal_p50_ms", 16, ".1f"),
    ("ratio", "from_reveal_ratio_p50", 6, ".1f"), ("round changes", "round_changes", 14, "d"),
)


def quorum_count(n: int) -> int:
    """Validators of equal power needed for more than 2/3 of it."""
    return 2 * n // 3 + 1


def measure_swarm(n: int, motions: int, workdir: Path) -> dict:
    with running_swarm(workdir / f"n{n}", n, bench_params(), log_level="debug") as swarm:
        async def submit_all() -> list[str]:
            ids = []
            async with trio.open_nursery() as nursery:
                client = await nursery.start(MotionClient(swarm).run)
                for _ in range(motions):
                    [(motion_id, _)] = await client.submit(1)
                    ids.append(motion_id)
                    await trio.to_thread.run_sync(swarm.wait_decided, {motion_id}, DECIDE_TIMEOUT)
                nursery.cancel_scope.cancel()
            return ids

        ids = trio.run(submit_all)
        q = quorum_count(n)
        latencies, from_reveal, extra_rounds = [], [], 0
        for motion_id in ids:
            ready = sorted(event_time(e) for p in swarm.procs for e in p.named("ballot_committed")
                           if e["motion_id"] == motion_id)
            decided = [event_time(e) for p in swarm.procs for e in p.named("agreement") if e["motion_id"] == motion_id]
            if len(ready) < q or len(decided) < n:
                raise SystemExit(f"n={n}: motion {motion_id[:12]}: {len(ready)} ballots, {len(decided)} decisions")
            latencies.append(max(decided) - ready[q - 1])
            arrived = min(event_time(e) for p in swarm.procs for e in p.named("motion_received")
                          if e["motion_id"] == motion_id)
            revealed = sorted(min((event_time(e) for e in p.named("ballots_sent")
                                   if e["type"] == "ballot_reveal" and event_time(e) >= arrived),
                                  default=float("inf")) for p in swarm.procs)
            from_reveal.append(max(decided) - revealed[q - 1])
        for p in swarm.procs:
            extra_rounds = max(extra_rounds, len(p.named("round_changed")))
    ms = sorted(1000 * x for x in latencies)
    reveal_ms = sorted(1000 * x for x in from_reveal)
    return {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "min_ms": ms[0], "max_ms": ms[-1],
            "latencies_ms": [round(x, 1) for x in ms], "round_changes": extra_rounds,
            "from_reveal_p50_ms": percentile(reveal_ms, 50), "from_reveal_p99_ms": percentile(reveal_ms, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,7,10,16", help="validator counts, comma-separated")
    parser.add_argument("--motions", type=int, default=10, help="motions per size, one at a time")
    parser.add_argument("--gossip-seconds", type=float, default=3.0, help="length of the gossip baseline phase")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    print(" ".join(header.rjust(width) for header, _, width, _ in COLUMNS), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-agreement-") as tmp:
        for n in sizes:
            started = time.monotonic()
            gossip = measure_gossip(n, args.gossip_seconds, 1.0)
            row = {"n": n, "motions": args.motions, **measure_swarm(n, args.motions, Path(tmp)),
                   "gossip_p50_ms": gossip["latency_p50_ms"], "gossip_p99_ms": gossip["latency_p99_ms"]}
            row["ratio_p50"] = row["p50_ms"] / row["gossip_p50_ms"]
            row["from_reveal_ratio_p50"] = row["from_reveal_p50_ms"] / row["gossip_p50_ms"]
            row["seconds"] = round(time.monotonic() - started, 1)
            rows.append(row)
            print(" ".join(format(row[key], f">{width}{fmt}") for _, key, width, fmt in COLUMNS), flush=True)
    headline = agreement_headline({"results": rows})
    write_report(args.out, "agreement latency: quorum of ballots available -> decided at every peer, separate "
                 "processes on 127.0.0.1, zero-cost ballots; beside the gossip delivery p50 of the same run",
                 headline, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
