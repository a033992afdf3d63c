"""Consensus throughput: motions decided per second with ballots that cost nothing
(``--model fixed``), for swarms of separate `conclave peer` processes on 127.0.0.1.
The swarm's ``motion_deadline_ms`` is 10 s here (a motion that gossip lost at some
validators closes at its deadline; 2 minutes by default), and a block may hold up to
256 resolutions in one 1 MB message (swarm_harness.bench_params).

For each size n, one client submits ``--motions`` motions at an offered rate
(``--rate``; by default the target, so the figure is at most the target: at twice the
target some runs leave motions undecided after 300 s, issue 7's notes), and waits until
they have all left before it closes; the swarm commits, reveals, resolves and decides
them, packing many resolutions per block. Throughput is the number of motions divided by the time from
the first ``motion_received`` at any peer to the last ``agreement`` at any peer (every
peer decides every motion). Messages per motion count the envelopes the validators
published (commitments, reveals, proposals, votes, status) and the pubsub messages they
went in (several envelopes share one when they are ready together).

    python bench/bench_throughput.py [--sizes 4,16] [--motions 1000,200] [--rate 200,50]

Writes bench/results/throughput.json; the last line is the headline figure.
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

from swarm_harness import ROOT, MotionClient, bench_params, event_time, running_swarm, write_report  # noqa: E402

DEADLINE_MS = 10_000

RESULTS = ROOT / "bench" / "results" / "throughput.json"
TARGETS = {4: 200.0, 16: 50.0}  # motions/s, from the issue
COLUMNS = (  # (header, key, width, format)
    ("n", "n", 4, "d"), ("motions", "motions", 8, "d"), ("offered/s", "offered_per_s", 10, ".0f"),
    ("seconds", "seconds", 8, ".1f"),
    ("motions/s", "motions_per_s", 10, ".1f"), ("target", "target_per_s", 7, ".0f"),
    ("env/motion", "envelopes_per_motion", 11, ".2f"), ("frames/motion", "frames_per_motion", 14, ".3f"),
    ("heights", "heights", 8, "d"), ("res/block", "resolutions_per_block", 10, ".1f"),
    ("cores", "cores", 6, ".2f"), ("by deadline", "closed_by_deadline", 12, "d"),
    ("quorum-closed/s", "quorum_closed_per_s", 16, ".1f"),
)


def measure(n: int, motions: int, rate: float, workdir: Path, timeout: float) -> dict:
    with running_swarm(workdir / f"n{n}", n, bench_params(motion_deadline_ms=DEADLINE_MS)) as swarm:
        cpu_before = swarm.cpu_seconds()

        async def submit() -> set[str]:
            sent: list[tuple[str, float]] = []
            async with trio.open_nursery() as nursery:
                client = await nursery.start(MotionClient(swarm).run)
                # The offered load: ``rate`` motions a second, in ten slices a second.
                start = trio.current_time()
                while len(sent) < motions:
                    due = min(motions, int((trio.current_time() - start) * rate) + max(1, int(rate / 10)))
                    if due > len(sent):
                        sent += await client.submit(due - len(sent))
                    await trio.sleep(0.1)
                await client.finish()
                nursery.cancel_scope.cancel()
            return {m for m, _ in sent}

        ids = trio.run(submit)
        swarm.wait_decided(ids, timeout)
        cpu = swarm.cpu_seconds() - cpu_before
    # The peers have stopped: each logged its counters in peer_stopped.
    first = min(event_time(e) for p in swarm.procs for e in p.named("motion_received") if e["motion_id"] in ids)
    last = max(event_time(e) for p in swarm.procs for e in p.named("agreement") if e["motion_id"] in ids)
    stopped = [p.named("peer_stopped")[-1] for p in swarm.procs]
    agreed = [e for e in swarm.procs[0].named("agreement") if e["motion_id"] in ids]
    quorum = [event_time(e) for e in agreed if e["closing"] == "quorum"]
    blocks = [e["resolutions"] for e in swarm.procs[0].named("block_committed")]
    seconds = last - first
    return {
        "n": n, "motions": motions, "offered_per_s": rate, "seconds": seconds, "motions_per_s": motions / seconds,
        "target_per_s": TARGETS.get(n, float("nan")),
        "envelopes_per_motion": sum(s["published"] for s in stopped) / motions,
        "frames_per_motion": sum(s["frames"] for s in stopped) / motions,
        "heights": len(blocks), "resolutions_per_block": sum(blocks) / max(1, len(blocks)),
        # Motions gossip lost at some validators close only at their deadline, with the
        # ballots that were revealed; the quorum-closed ones show the pipeline's rate.
        "closed_by_deadline": len(agreed) - len(quorum),
        "quorum_closed_per_s": len(quorum) / (max(quorum) - first) if quorum else 0.0,
        "forced_publishes": sum(s.get("forced", 0) for s in stopped),
        "cores": cpu / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,16", help="validator counts, comma-separated")
    parser.add_argument("--motions", default="1000,200", help="motions per size, comma-separated (one for all)")
    parser.add_argument("--rate", default="200,50", help="offered load, motions/s, per size (one for all)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the decisions")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(m) for m in args.motions.split(",")]
    if len(counts) == 1:
        counts *= len(sizes)
    if len(counts) != len(sizes):
        parser.error("--motions: give one count, or one per size")
    rates = [float(r) for r in args.rate.split(",")]
    if len(rates) == 1:
        rates *= len(sizes)
    if len(rates) != len(sizes):
        parser.error("--rate: give one rate, or one per size")

    print(" ".join(header.rjust(width) for header, _, width, _ in COLUMNS), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        for n, motions, rate in zip(sizes, counts, rates, strict=True):
            started = time.monotonic()
            row = measure(n, motions, rate, Path(tmp), args.timeout)
            row["target_met"] = bool(row["motions_per_s"] >= row["target_per_s"])
            row["wall_s"] = round(time.monotonic() - started, 1)
            rows.append(row)
            print(" ".join(format(row[key], f">{width}{fmt}") for _, key, width, fmt in COLUMNS), flush=True)
    headline = "; ".join(f"{r['motions_per_s']:.0f} motions/s at n={r['n']} ({r['envelopes_per_motion']:.1f} envelopes, "
                         f"{r['frames_per_motion']:.2f} pubsub messages per motion, {r['closed_by_deadline']} closed "
                         f"by deadline)" for r in rows)
    write_report(args.out, "consensus throughput: motions decided per second with zero-cost ballots, separate "
                 "processes on 127.0.0.1, one client submitting at an offered rate", headline, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
