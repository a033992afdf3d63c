"""A Byzantine validator among three honest `conclave peer` processes (issue 8, part 3):
v4 is tests/faults/byzantine_peer.py, which double-votes, votes for blocks that do not
exist, proposes twice, replays old messages and reveals ballots other than those it
committed to. The honest three must keep deciding, agree on one chain, log
``evidence`` that anyone holding the validator set can verify, never equivocate
themselves, and count v4's ballots nowhere."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from agents.procs import PeerProcess, free_tcp_ports, run_conclave
from agents.run import dial_targets, propose_many
from agents.swarm_init import init_swarm
from agents.valset import consensus_valset
from consensus.evidence import DuplicateProposalEvidence, DuplicateVoteEvidence, find_equivocations
from consensus.types import SignedVote
from p2p.keys import Identity
from p2p.messages import Motion
from tests.integration.conftest import Swarm, wait_joined

pytestmark = pytest.mark.integration

MOTIONS = 4
DECIDE_TIMEOUT = 90.0
HONEST = ("v1", "v2", "v3")


def durable(swarm: Swarm, name: str) -> list[dict]:
    res = run_conclave("log", "--data", str(swarm.dir / name), "--json")
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_honest_validators_keep_safety_and_deciding_and_prove_the_liar_equivocated(tmp_path: Path) -> None:
    cfg = init_swarm(tmp_path, 4, "byzantine", free_tcp_ports(4))
    swarm = Swarm(tmp_path, cfg)
    valset = consensus_valset(cfg)
    liar_index = valset.index_of(cfg.validators[3].public_key)
    traffic = tmp_path / "votes.hex"
    sniffer = subprocess.Popen([sys.executable, "-m", "tests.integration.sniffer", str(swarm.file), str(traffic)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    honest: dict[str, PeerProcess] = {}
    liar = None
    try:
        assert sniffer.stdout.readline().strip() == b"ready"
        honest = {n: swarm.start(n) for n in HONEST}
        liar = PeerProcess("v4", [], command=[sys.executable, "-m", "tests.faults.byzantine_peer", str(swarm.file),
                                              str(swarm.key("v4"))])
        liar.wait_event("byz_ready", 30.0)
        for p in honest.values():
            wait_joined(p, set(HONEST) - {p.name} | {"v4"})
        motions = [Motion(f"With a liar among us, motion {i}: proceed?") for i in range(MOTIONS)]
        ids = trio.run(propose_many, cfg, Identity.generate(), motions, dial_targets(cfg, []), 30.0, 1.1)["motion_ids"]
        for p in honest.values():
            p.wait_for(lambda evs: set(ids) <= {e.get("motion_id") for e in evs if e["event"] == "agreement"},
                       DECIDE_TIMEOUT, f"agreement on {MOTIONS} motions")
    finally:
        for p in honest.values():
            p.stop()
        if liar is not None:
            liar.stop()
        sniffer.send_signal(signal.SIGTERM)
        sniffer.wait(10)

    # The liar did what it is for.
    assert liar.named("byz_double_vote") and liar.named("byz_mismatched_reveal") and liar.named("byz_replayed")

    # Safety: one chain; the only equivocator on the wire is the liar.
    chains = {n: [(d["height"], d["block_hash"]) for d in durable(swarm, n)] for n in HONEST}
    assert len(set(map(tuple, chains.values()))) == 1, chains
    votes = [SignedVote.decode(bytes.fromhex(line)) for line in traffic.read_text().split()]
    on_wire = find_equivocations(votes, valset, cfg.swarm_id)
    assert on_wire and {ev.first.vote.validator for ev in on_wire} == {liar_index}

    # Each honest peer logged evidence against v4, and the evidence verifies on its own.
    for p in honest.values():
        logged = p.named("evidence")
        assert logged, f"{p.name} logged no evidence"
        for e in logged:
            assert e["validator"] == "v4"
            decode = DuplicateProposalEvidence.decode if e["kind"] == "proposal" else DuplicateVoteEvidence.decode
            ev = decode(bytes.fromhex(e["evidence"]))
            assert ev.verify(valset, cfg.swarm_id) and ev.validator == liar_index
    # A double proposal is proved too, by the peers that were still at its height.
    doubled = {(e["height"], e["round"]) for e in liar.named("byz_double_proposal")}
    proved = {(e["height"], e["round"]) for p in honest.values() for e in p.named("evidence") if e["kind"] == "proposal"}
    assert proved <= doubled and (proved or not doubled), (doubled, proved)

    # Its ballots were refused (each reveal opens no commitment): no tally counts v4.
    for p in honest.values():
        assert p.named("ballot_rejected"), f"{p.name} took the liar's reveals"
    decided = {m["motion_id"]: m for d in durable(swarm, "v1") for m in d["motions"]}
    for motion_id in ids:
        assert sum(decided[motion_id]["tally"].values()) == len(HONEST), decided[motion_id]

    # Its verbatim replays were rejected by the gates as replays, and counted.
    stopped = [p.named("peer_stopped")[-1] for p in honest.values()]
    assert sum(s["rejected"].get("replay", 0) for s in stopped) > 0, stopped
