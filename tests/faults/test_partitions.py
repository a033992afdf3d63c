"""Real network partitions of a swarm of four `conclave peer` processes (issue 8, part 1).

Each peer runs in its own Linux network namespace (tests/faults/netns.py); a partition
moves links between software bridges, so packets across it vanish, with no reset and no
error, as when a switch fails. With ``drop`` the TCP connections across the split are
aborted as well (a partition longer than TCP's timeout); without it they survive and
deliver, late, what was sent meanwhile.

Every scenario ends with the same checks: at every height, every peer that committed it
committed the same block (the safety property), and every validator's durable log holds
the same chain. Every wait is for a logged event or a status answer, bounded in time;
nothing sleeps in the hope that something has settled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import pytest

from agents.procs import Event, joined, live_peers
from agents.valset import consensus_valset
from tests.faults.conftest import CLIENTS, VALIDATORS, NsPeerProcess, NsSwarm

pytestmark = [pytest.mark.integration, pytest.mark.faults]

JOIN_TIMEOUT = 40.0  # four peers starting on two shared cores
DECIDE_TIMEOUT = 40.0
# After a heal: TCP's retransmission backoff (a connection that survived the split) or
# our redial backoff (one that did not), then a rebroadcast period and round timeouts.
HEAL_TIMEOUT = 60.0
STUCK_TIMEOUT = 40.0
MAX_STATUS_POLLS = 12


# --- waiting on logs ----------------------------------------------------------------------


def wait_match(p: NsPeerProcess, event: str, timeout: float, what: str, pred: Callable[[Event], bool]) -> Event:
    """The first ``event`` of ``p`` for which ``pred`` holds, waiting up to ``timeout``."""
    def match(e: Event) -> bool:
        return e["event"] == event and pred(e)

    p.wait_for(lambda evs: any(match(e) for e in evs), timeout, what)
    return next(e for e in p.named(event) if match(e))


def wait_agreed(peers: Iterable[NsPeerProcess], motion_ids: Iterable[str], timeout: float) -> None:
    ids = set(motion_ids)
    for p in peers:
        p.wait_for(lambda evs: ids <= {e.get("motion_id") for e in evs if e["event"] == "agreement"},
                   timeout, f"agreement on {len(ids)} motion(s)")


def wait_connected(peers: dict[str, NsPeerProcess], timeout: float = JOIN_TIMEOUT) -> None:
    """Until every peer has a live connection to every other validator."""
    for name, p in peers.items():
        p.wait_for(lambda evs, name=name: joined(evs, set(peers) - {name}), timeout, "connected to all validators")


def wait_disconnected(p: NsPeerProcess, names: set[str], timeout: float = DECIDE_TIMEOUT) -> None:
    """Until ``p`` has noticed that its connections to ``names`` are gone."""
    p.wait_for(lambda evs: not (names & live_peers(evs)), timeout, f"disconnected from {sorted(names)}")


def caught_up(events: list[Event]) -> set[int]:
    """The heights applied by catch-up, from ``catchup_finished`` events."""
    return {h for e in events if e["event"] == "catchup_finished" for h in range(e["first"], e["last"] + 1)}


def committed(p: NsPeerProcess) -> dict[int, str]:
    """Height -> block hash of every block ``p`` logged as committed."""
    return {e["height"]: e["block_hash"] for e in p.named("block_committed")}


def tip(p: NsPeerProcess) -> int:
    return max(committed(p), default=0)


def wait_tip(peers: Iterable[NsPeerProcess], height: int, timeout: float) -> None:
    for p in peers:
        p.wait_for(lambda evs: any(e["event"] == "block_committed" and e["height"] >= height for e in evs),
                   timeout, f"committed height {height}")


# --- the swarm ------------------------------------------------------------------------------


def start(swarm: NsSwarm) -> dict[str, NsPeerProcess]:
    peers = swarm.start_all()
    wait_connected(peers)
    return peers


def decide_one(swarm: NsSwarm, text: str) -> str:
    """Put one motion to the whole (connected) swarm and wait until all four agreed."""
    motion = swarm.propose(CLIENTS[0], text)["motion_id"]
    wait_agreed(swarm.peers.values(), [motion], DECIDE_TIMEOUT)
    return motion


def wait_stuck(swarm: NsSwarm, client: str, side: list[str], height: int, deadline: float) -> dict[str, dict]:
    """Poll ``conclave status`` from ``client`` until every validator of ``side`` is in
    height ``height``, round 0, and has prevoted: as far as a side without a quorum can
    go, since moving on needs prevotes from more than 2/3 of the power. Each poll takes
    the status timeout (the other side's validators never answer), so this does not spin."""
    rows: dict[str, dict] = {}
    for _ in range(MAX_STATUS_POLLS):
        rows = swarm.status(client)
        states = [rows[v].get("status") or {} for v in side]
        if all(s.get("height") == height - 1 and s.get("started") and s.get("round") == 0 and s.get("step") == "prevote"
               for s in states):
            return rows
        if time.monotonic() > deadline:
            break
    raise TimeoutError(f"{side} not stuck in height {height} round 0 prevote; last status: {rows}")


def assert_safe(swarm: NsSwarm) -> None:
    """No height at which two peers committed different blocks, in any process's log."""
    seen: dict[int, dict[str, str]] = {}
    for p in swarm.all_processes():
        for height, block in committed(p).items():
            seen.setdefault(height, {})[p.name] = block
    forks = {h: by for h, by in seen.items() if len(set(by.values())) > 1}
    assert not forks, f"two blocks committed at one height: {forks}"
    evidence = [(p.name, e["msg"]) for p in swarm.all_processes() for e in p.named("evidence")]
    assert not evidence, f"equivocation reported: {evidence}"


def assert_same_chain(swarm: NsSwarm) -> list[dict]:
    """Every validator's durable log holds the same blocks at heights 1..tip."""
    logs = {v: swarm.durable_log(v) for v in VALIDATORS}
    first = logs[VALIDATORS[0]]
    assert [d["height"] for d in first] == list(range(1, len(first) + 1)), "gaps in the durable log"
    for name, docs in logs.items():
        assert [(d["height"], d["block_hash"]) for d in docs] == [(d["height"], d["block_hash"]) for d in first], \
            f"{name}'s durable log differs from {VALIDATORS[0]}'s"
    return first


def converge(swarm: NsSwarm) -> list[dict]:
    """After the last heal: all four at the highest tip any reached, then the checks."""
    top = max(tip(p) for p in swarm.peers.values())
    wait_tip(swarm.peers.values(), top, HEAL_TIMEOUT)
    assert_safe(swarm)
    return assert_same_chain(swarm)


def proposer(swarm: NsSwarm, height: int, round: int) -> str:
    return swarm.cfg.validators[consensus_valset(swarm.cfg).proposer(height, round)].name


# --- the harness itself --------------------------------------------------------------------


def test_fabric_partitions_and_heals(fabric) -> None:
    """What the scenarios rely on: a split stops packets across it and only those,
    a cut node reaches nobody, and a heal restores every path."""
    assert fabric.reachable("v1", "v4")
    fabric.partition(["v1", "v2"], ["v3", "v4"])
    assert fabric.placement() == {"v1": "br1", "v2": "br1", "v3": "br2", "v4": "br2", "c1": None, "c2": None}
    assert fabric.reachable("v1", "v2") and fabric.reachable("v4", "v3")
    assert not fabric.reachable("v1", "v3") and not fabric.reachable("v4", "v2")
    fabric.heal()
    fabric.cut("v2")
    assert not fabric.reachable("v2", "v1") and not fabric.reachable("c1", "v2")
    assert fabric.reachable("v1", "v3")
    fabric.heal()
    assert set(fabric.placement().values()) == {"br0"}
    assert fabric.reachable("v2", "v1") and fabric.reachable("v1", "v3")


# --- the scenarios ---------------------------------------------------------------------------


@pytest.mark.parametrize("drop", [False, True], ids=["short", "long"])
def test_isolated_validator_catches_up(ns_swarm: NsSwarm, drop: bool) -> None:
    """One validator cut off: the other three (more than 2/3) keep deciding; healed, the
    lone one learns every decision it missed: by late delivery (short) or by catch-up
    over /conclave/sync (long: its connections were aborted)."""
    peers = start(ns_swarm)
    decide_one(ns_swarm, "Warm up before the partition?")
    base = tip(peers["v1"])
    # Not the proposer of the heights decided while it is away: that is scenario (c).
    lone = next(v for v in VALIDATORS if v not in {proposer(ns_swarm, base + k, 0) for k in (1, 2)})
    rest = {v: p for v, p in peers.items() if v != lone}

    ns_swarm.fabric.isolate(lone, drop=drop)
    if drop:
        for p in rest.values():
            wait_disconnected(p, {lone})
    ids = []
    for i in range(2):
        sent = ns_swarm.propose("c1", f"Decided while {lone} is away, #{i}?")
        assert sent["peers"] == 3, f"the client reached {sent['peers']} peers, not the 3 still connected"
        ids.append(sent["motion_id"])
    wait_agreed(rest.values(), ids, DECIDE_TIMEOUT)
    assert not {e["motion_id"] for e in peers[lone].named("agreement")} & set(ids), f"{lone} agreed while cut off"
    missed = min(tip(p) for p in rest.values())
    assert tip(peers[lone]) == base and missed > base

    ns_swarm.fabric.heal()
    wait_agreed([peers[lone]], ids, HEAL_TIMEOUT)
    if drop:  # no old connection could deliver them: they came by catch-up (logged once applied)
        wanted = set(range(base + 1, missed + 1))
        peers[lone].wait_for(lambda evs: wanted <= caught_up(evs), DECIDE_TIMEOUT, f"caught up heights {sorted(wanted)}")
    wait_connected(peers)
    chain = converge(ns_swarm)
    assert len(chain) >= missed


def test_split_two_two_decides_nothing_until_healed(ns_swarm: NsSwarm) -> None:
    """A 2/2 split: neither side holds more than 2/3 of the power, so neither commits,
    although both start the height and prevote; healed, both sides' motions are decided
    by all four."""
    peers = start(ns_swarm)
    decide_one(ns_swarm, "Warm up before the split?")
    base = tip(peers["v1"])
    side_a, side_b = ["v1", "v2"], ["v3", "v4"]

    ns_swarm.fabric.partition([*side_a, "c1"], [*side_b, "c2"], drop=True)
    for mine, theirs in ((side_a, side_b), (side_b, side_a)):
        for v in mine:
            wait_disconnected(peers[v], set(theirs))
    motion_a = ns_swarm.propose("c1", "Put to side A during the split?")
    motion_b = ns_swarm.propose("c2", "Put to side B during the split?")
    assert motion_a["peers"] == 2 and motion_b["peers"] == 2
    deadline = time.monotonic() + STUCK_TIMEOUT
    wait_stuck(ns_swarm, "c1", side_a, base + 1, deadline)
    wait_stuck(ns_swarm, "c2", side_b, base + 1, deadline)
    # Both sides are in the middle of height base+1 and can go no further: nothing new
    # may have been committed anywhere.
    for p in peers.values():
        assert tip(p) == base, f"{p.name} committed during the split: {committed(p)}"
    assert_safe(ns_swarm)

    ns_swarm.fabric.heal()
    wait_agreed(peers.values(), [motion_a["motion_id"], motion_b["motion_id"]], HEAL_TIMEOUT)
    converge(ns_swarm)


def test_proposer_cut_mid_round(ns_swarm: NsSwarm) -> None:
    """The proposer of height h proposes in round 0 and is cut off before that round can
    finish; the other three move to a later round and decide h on another block. Healed,
    the proposer commits that block, not its own.

    Mid-round by construction (packets cannot be timed to the millisecond without
    netem): the proposer P and the next one Q are split from the other two with a motion
    only they know, so round 0 of h starts, P proposes and both prevote, and the round
    can go no further. Then P is cut off and Q rejoins the other two."""
    peers = start(ns_swarm)
    decide_one(ns_swarm, "Warm up before the proposer is cut?")
    h = tip(peers["v1"]) + 1
    p_name, q_name = proposer(ns_swarm, h, 0), proposer(ns_swarm, h, 1)
    others = [v for v in VALIDATORS if v not in (p_name, q_name)]

    ns_swarm.fabric.partition([p_name, q_name, "c2"], [*others, "c1"])
    sent = ns_swarm.propose("c2", f"Proposed by {p_name}, who is then cut off?")
    assert sent["peers"] == 2
    wait_match(peers[p_name], "block_proposed", DECIDE_TIMEOUT, f"proposal at {h}/0",
               lambda e: e["height"] == h and e["round"] == 0)
    wait_stuck(ns_swarm, "c2", [p_name, q_name], h, time.monotonic() + STUCK_TIMEOUT)

    ns_swarm.fabric.partition([q_name, *others, *CLIENTS])  # p_name, named nowhere, is cut off
    for v in [q_name, *others]:
        wait_match(peers[v], "round_changed", HEAL_TIMEOUT, f"a later round at height {h}",
                   lambda e: e["height"] == h and e["round"] >= 1)
    wait_tip([peers[v] for v in [q_name, *others]], h, HEAL_TIMEOUT)
    assert h not in committed(peers[p_name]), f"{p_name} committed while cut off"
    decision = next(d for d in ns_swarm.durable_log(q_name) if d["height"] == h)
    assert decision["round"] >= 1, decision
    p_key = next(v.public_key.hex() for v in ns_swarm.cfg.validators if v.name == p_name)
    assert decision["proposer"] != p_key, "the cut-off proposer's round-0 block was committed"

    ns_swarm.fabric.heal()
    wait_tip([peers[p_name]], h, HEAL_TIMEOUT)
    wait_agreed(peers.values(), [sent["motion_id"]], HEAL_TIMEOUT)
    converge(ns_swarm)
