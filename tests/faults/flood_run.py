"""Floods (issue 8, part 4): three honest `conclave peer` processes, and two flooders
(tests/faults/flooder.py) sending as fast as they can: a member with v4's key (its own
signed votes for heights far ahead, and garbage frames, over its direct links) and a
stranger (signed motions and garbage, over gossip). Meanwhile motions are put to the
swarm; the honest three must decide them all, ban both flooders (and never each other),
and stay within a memory bound (their RSS is sampled throughout).

    python -m tests.faults.flood_run [--seconds 20] [--motions 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path

import trio

from agents.procs import PeerProcess, free_tcp_ports
from agents.run import dial_targets, propose_many
from agents.swarm_init import init_swarm
from p2p.keys import Identity, read_key_file, write_key_file
from p2p.messages import Motion
from tests.integration.conftest import Swarm, wait_joined

HONEST = ("v1", "v2", "v3")
READY_TIMEOUT = 40.0
DECIDE_TIMEOUT = 90.0
RSS_SAMPLE_S = 0.5
# A peer of this swarm idles at 100-150 MB; a flood that queued what it received
# would pass this within seconds.
RSS_BOUND_MB = 400
HANG_UP_S = 3.0  # from a ban to the banned peer's connection closing (floods last longer)


@dataclass
class FloodReport:
    seconds: float
    motions: int
    sent: dict[str, int] = field(default_factory=dict)  # flooder -> messages sent
    per_s: dict[str, int] = field(default_factory=dict)
    decided_s: float | None = None  # from the first submit until all honest peers agreed on every motion
    undecided: dict[str, list[str]] = field(default_factory=dict)  # honest peer -> motion ids it did not decide
    banned: dict[str, set[str]] = field(default_factory=dict)  # honest peer -> sources it banned
    hung_up: dict[str, set[str]] = field(default_factory=dict)  # honest peer -> banned sources it then lost
    rss_mb: dict[str, tuple[int, int]] = field(default_factory=dict)  # honest peer -> (before, peak)
    screened: dict[str, int] = field(default_factory=dict)  # honest peer -> frames dropped unread
    rejected: dict[str, int] = field(default_factory=dict)  # honest peer -> messages rejected by its gate
    inbound_dropped: dict[str, int] = field(default_factory=dict)
    flooder_ids: dict[str, str] = field(default_factory=dict)  # flooder -> peer id
    honest_ids: dict[str, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = [f"{p} did not decide {ids}" for p, ids in self.undecided.items() if ids]
        for p in self.banned:
            missing = set(self.flooder_ids.values()) - self.banned[p]
            if missing:
                out.append(f"{p} did not ban {sorted(missing)}")
            if self.banned[p] - self.hung_up.get(p, set()):
                out.append(f"{p} kept a connection to banned {sorted(self.banned[p] - self.hung_up.get(p, set()))}")
            if self.banned[p] & set(self.honest_ids.values()):
                out.append(f"{p} banned an honest peer: {sorted(self.banned[p] & set(self.honest_ids.values()))}")
        out += [f"{p} peaked at {peak} MB RSS (bound {RSS_BOUND_MB})" for p, (_, peak) in self.rss_mb.items()
                if peak > RSS_BOUND_MB]
        return out


def _when(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return 0


def run_floods(root: Path, seconds: float, motions: int, say=print, member_kinds: str = "votes,garbage",
               stranger_kinds: str = "motions,garbage") -> FloodReport:
    """``*_kinds``: what each flooder sends (flooder.KINDS). Only garbage leads to a ban;
    with valid messages alone, the per-peer rate limit is what holds them back."""
    cfg = init_swarm(root, 4, "floods", free_tcp_ports(4))
    swarm = Swarm(root, cfg)
    stranger_key = root / "stranger.key"
    write_key_file(stranger_key, Identity.generate())
    report = FloodReport(seconds, motions)
    report.flooder_ids = {"member": read_key_file(swarm.key("v4")).peer_id,
                          "stranger": read_key_file(stranger_key).peer_id}
    report.honest_ids = {n: read_key_file(swarm.key(n)).peer_id for n in HONEST}
    honest: dict[str, PeerProcess] = {}
    flooders: dict[str, PeerProcess] = {}
    try:
        honest = {n: swarm.start(n) for n in HONEST}
        for p in honest.values():
            wait_joined(p, set(HONEST) - {p.name})
        before = {n: rss_mb(p.proc.pid) for n, p in honest.items()}
        for name, key, kinds in (("member", swarm.key("v4"), member_kinds),
                                 ("stranger", stranger_key, stranger_kinds)):
            flooders[name] = PeerProcess(name, [], command=[
                sys.executable, "-m", "tests.faults.flooder", str(swarm.file), str(key), "--kind", kinds,
                "--seconds", str(seconds)])
        for f in flooders.values():
            f.wait_event("flood_ready", READY_TIMEOUT)
        say(f"flooding for {seconds:g} s; putting {motions} motions to the swarm")
        peak = dict(before)
        submitted = time.monotonic()
        ids = trio.run(propose_many, cfg, Identity.generate(), [Motion(f"Decided under a flood, #{i}?")
                                                                for i in range(motions)],
                       dial_targets(cfg, []), 30.0, 1.1)["motion_ids"]
        # Sample memory until the floods end and every motion is decided (or time is up).
        deadline = submitted + max(seconds, 0) + DECIDE_TIMEOUT
        while time.monotonic() < deadline:
            for n, p in honest.items():
                peak[n] = max(peak[n], rss_mb(p.proc.pid))
            done = all(f.named("flood_done") for f in flooders.values())
            agreed = all(set(ids) <= {e.get("motion_id") for e in p.named("agreement")} for p in honest.values())
            if agreed and report.decided_s is None:
                report.decided_s = round(time.monotonic() - submitted, 1)
            if done and agreed:
                break
            time.sleep(RSS_SAMPLE_S)  # a sampling period, not a wait for something to settle
        for n, p in honest.items():
            got = {e.get("motion_id"): e for e in p.named("agreement")}
            report.undecided[n] = [m for m in ids if m not in got]
            report.rss_mb[n] = (before[n], peak[n])
        for f in flooders.values():
            f.wait_event("flood_done", READY_TIMEOUT)
            done = f.named("flood_done")[-1]
            report.sent[f.name], report.per_s[f.name] = done["sent"], done["per_s"]
    finally:
        for f in flooders.values():
            f.stop()
        for p in honest.values():
            p.stop()
    for n, p in honest.items():
        report.banned[n] = {e["source"] for e in p.named("peer_banned")}
        # Hung up on: the connection went within HANG_UP_S of the ban, while the flooder
        # was still sending (it leaves by itself only at the end of the flood).
        bans = {e["source"]: _when(e) for e in reversed(p.named("peer_banned"))}
        report.hung_up[n] = {e["peer_id"] for e in p.named("peer_left")
                             if e["peer_id"] in bans and 0 <= _when(e) - bans[e["peer_id"]] <= HANG_UP_S}
        stopped = p.named("peer_stopped")
        if stopped:
            s = stopped[-1]
            report.screened[n] = s.get("screened", 0)
            report.rejected[n] = sum(s.get("rejected", {}).values())
            report.inbound_dropped[n] = s.get("inbound_dropped", 0)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--motions", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="faults-flood-") as tmp:
        report = run_floods(Path(tmp), args.seconds, args.motions)
    print(report)
    problems = report.problems()
    print("\n".join(problems) if problems else "no problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
