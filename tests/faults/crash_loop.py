"""Crashes (issue 8, part 2): SIGKILL a validator of a real 4-peer swarm at a moment
drawn from a seed, again and again, restarting it each time from its data directory.

Each round: a motion is put to the swarm; the victim (drawn from the seed) is killed
the moment it logs the event drawn for the round (the motion arriving, its ballot
committed or sent, a block committed, an agreement, or a drawn delay after the motion
arrived), or after ``MOMENT_TIMEOUT`` if the
event does not come; the three others must decide the motion without it (liveness);
the victim is restarted and must reach the survivors' tip (its catch-up time is
measured). A separate subscriber records every vote on the wire; at the end the
evidence detector must find no two conflicting signatures in all of it, no peer may
have logged ``evidence``, and every peer's durable log must hold the same chain.

    python -m tests.faults.crash_loop [--kills 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from agents.procs import PeerProcess, free_tcp_ports, run_conclave
from agents.run import dial_targets, propose_many
from agents.swarm_init import init_swarm
from agents.valset import consensus_valset
from consensus.evidence import find_equivocations
from consensus.types import SignedVote
from p2p.keys import Identity
from p2p.messages import Motion
from tests.integration.conftest import Swarm, wait_joined

# DELAYED: a drawn 0-400 ms after the motion arrived, which lands inside the height's
# votes (signed and fsynced, but logged only at debug) as often as between them.
DELAYED = "delayed"
MAX_DELAY_S = 0.4
MOMENTS = ("motion_received", "ballot_committed", "ballots_sent", "block_committed", "agreement", DELAYED)
MOMENT_TIMEOUT = 10.0  # s: a moment that does not come (a motion decided before it) kills anyway
DECIDE_TIMEOUT = 60.0
CATCH_UP_TIMEOUT = 60.0


@dataclass
class CrashReport:
    kills: int = 0
    decisions: int = 0  # heights in the common chain at the end
    safety_violations: list[str] = field(default_factory=list)
    liveness_failures: list[str] = field(default_factory=list)
    catch_up_s: list[float] = field(default_factory=list)
    rejected: int = 0  # inputs the peers' gates rejected (from their counters at exit)
    moments: dict[str, int] = field(default_factory=dict)


def _submit(swarm: Swarm, text: str) -> str:
    result = trio.run(propose_many, swarm.cfg, Identity.generate(), [Motion(text)], dial_targets(swarm.cfg, []), 30.0)
    return result["motion_ids"][0]


def _agreed(p: PeerProcess, motion_id: str, timeout: float) -> bool:
    try:
        p.wait_for(lambda evs: any(e["event"] == "agreement" and e.get("motion_id") == motion_id for e in evs),
                   timeout, f"agreement on {motion_id[:12]}")
        return True
    except TimeoutError:
        return False


def _height(p: PeerProcess) -> int:
    return max([e["height"] for e in p.named("block_committed")]
               + [e["height"] for e in p.named("peer_started")] + [0])


def parse_chain(log_json: str) -> list[tuple[int, str]]:
    """(height, block hash) of each decision in the output of `conclave log --json`."""
    return [(d["height"], d["block_hash"]) for d in map(json.loads, log_json.splitlines())]


def durable_chain(data: Path) -> list[tuple[int, str]]:
    """The chain a peer's data directory holds, read beside the running peer."""
    res = run_conclave("log", "--data", str(data), "--json")
    if res.returncode != 0:
        raise RuntimeError(f"conclave log --data {data}: {res.stderr.strip()}")
    return parse_chain(res.stdout)


def run_crash_loop(root: Path, kills: int, seed: int, say=print) -> CrashReport:
    rng = random.Random(seed)
    cfg = init_swarm(root, 4, "crashes", free_tcp_ports(4))
    swarm = Swarm(root, cfg)
    names = [v.name for v in cfg.validators]
    report = CrashReport()
    traffic = root / "votes.hex"
    sniffer = subprocess.Popen([sys.executable, "-m", "tests.integration.sniffer", str(swarm.file), str(traffic)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    peers: dict[str, PeerProcess] = {}
    try:
        if sniffer.stdout.readline().strip() != b"ready":
            raise RuntimeError("the vote recorder did not start")
        peers = swarm.start_all()
        for k in range(1, kills + 1):
            victim, moment = rng.choice(names), rng.choice(MOMENTS)
            report.moments[moment] = report.moments.get(moment, 0) + 1
            event = "motion_received" if moment == DELAYED else moment
            seen = len(peers[victim].named(event))
            delay = rng.uniform(0, MAX_DELAY_S) if moment == DELAYED else 0.0
            motion_id = _submit(swarm, f"Crash round {k} (seed {seed}): keep deciding?")
            try:
                peers[victim].wait_for(lambda evs: sum(e["event"] == event for e in evs) > seen, MOMENT_TIMEOUT, event)
            except TimeoutError:
                pass
            time.sleep(delay)  # the moment itself, drawn from the seed: nothing settles here
            peers[victim].stop(signal.SIGKILL)
            report.kills += 1
            survivors = [peers[n] for n in names if n != victim]
            for p in survivors:
                if not _agreed(p, motion_id, DECIDE_TIMEOUT):
                    report.liveness_failures.append(f"round {k}: {p.name} did not decide with {victim} down")
            tip = max(_height(p) for p in survivors)
            started = time.monotonic()
            peers[victim] = again = swarm.start(victim)
            try:
                wait_joined(again, set(names) - {victim})
                again.wait_for(lambda evs: _height_of(evs) >= tip, CATCH_UP_TIMEOUT, f"height {tip}")
            except TimeoutError as exc:
                report.liveness_failures.append(f"round {k}: {victim} did not catch up to {tip}: {exc}")
                continue
            report.catch_up_s.append(time.monotonic() - started)
            say(f"  round {k}: killed {victim} at {moment}{f' {delay * 1000:.0f} ms' if delay else ''}; restarted at height {tip} in "
                f"{report.catch_up_s[-1]:.1f} s")
        final = _submit(swarm, f"After {kills} crashes (seed {seed}): all here?")
        for p in peers.values():
            if not _agreed(p, final, DECIDE_TIMEOUT):
                report.liveness_failures.append(f"end: {p.name} did not decide the last motion")
    finally:
        for p in peers.values():
            p.stop()
        sniffer.send_signal(signal.SIGTERM)
        sniffer.wait(10)
    _judge_safety(swarm, peers, traffic, report)
    return report


def _height_of(events: list[dict]) -> int:
    return max([e["height"] for e in events if e["event"] in ("block_committed", "peer_started")] + [0])


def _judge_safety(swarm: Swarm, peers: dict[str, PeerProcess], traffic: Path, report: CrashReport) -> None:
    votes = [SignedVote.decode(bytes.fromhex(line)) for line in traffic.read_text().split()]
    for ev in find_equivocations(votes, consensus_valset(swarm.cfg), swarm.cfg.swarm_id):
        report.safety_violations.append(f"conflicting votes on the wire: {ev}")
    for p in peers.values():
        for e in p.named("evidence"):
            report.safety_violations.append(f"{p.name} logged evidence: {e.get('msg')}")
        for e in p.named("peer_stopped"):
            report.rejected += sum(e.get("rejected", {}).values()) if isinstance(e.get("rejected"), dict) else 0
    chains = {name: durable_chain(swarm.dir / name) for name in peers}
    longest = max(chains.values(), key=len)
    for name, chain in chains.items():
        if chain != longest[: len(chain)]:
            report.safety_violations.append(f"{name}'s chain differs from the longest")
    report.decisions = min(len(c) for c in chains.values())
    if not votes:
        report.safety_violations.append("the recorder saw no votes: nothing was checked")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="crash-loop-") as tmp:
        report = run_crash_loop(Path(tmp), args.kills, args.seed)
    print(json.dumps(report.__dict__))
    return 0 if not (report.safety_violations or report.liveness_failures) else 1


if __name__ == "__main__":
    sys.exit(main())
