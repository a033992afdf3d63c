"""`conclave verify`'s checks (agents/verify.py) on a chain built here with real
signatures, anchored to a real ledger file: every verdict, VALID and each INVALID."""

from __future__ import annotations

import dataclasses
import hashlib

import nacl.signing
import pytest

from agents.anchoring import LedgerClient
from agents.storage import Decision
from agents.valset import consensus_valset
from agents.verify import verify
from consensus.anchor.evm import ChainUnavailable
from consensus.checkpoint import checkpoint_for
from consensus.merkle import InclusionProof
from consensus.qc import QuorumCertificate
from consensus.types import Block, SignedVote, Vote, VoteType
from p2p.chainkeys import chain_address, sign_digest
from p2p.keys import Identity
from p2p.swarmfile import PROTOCOL_VERSION, ChainConfig, Params, SwarmConfig, Validator, default_topic

SEEDS = [bytes([0x30 + i]) * 32 for i in range(4)]
K = 4


def make_swarm(tmp_path, seeds=SEEDS) -> SwarmConfig:
    vals = tuple(Validator(f"v{i}", Identity(s).peer_id, Identity(s).public_key, 1, (), chain_address(s))
                 for i, s in enumerate(seeds))
    return SwarmConfig("verify", default_topic("verify"), PROTOCOL_VERSION, vals, Params(checkpoint_interval=K),
                       ChainConfig(), tmp_path)


def certify(swarm: SwarmConfig, block: Block, signers=(0, 1, 2)) -> QuorumCertificate:
    votes = []
    for i in signers:
        v = Vote(VoteType.PRECOMMIT, block.height, 0, block.hash, i)
        votes.append(SignedVote(v, nacl.signing.SigningKey(SEEDS[i]).sign(v.signing_bytes(swarm.swarm_id)).signature))
    return QuorumCertificate.from_votes(votes, len(swarm.validators))


def chain(swarm: SwarmConfig, n: int, tag: bytes = b"") -> list[Decision]:
    out, prev = [], swarm.swarm_id
    for h in range(1, n + 1):
        block = Block(h, prev, Identity(SEEDS[h % 4]).public_key, tag + b"payload %d" % h)
        out.append(Decision(h, 0, block, certify(swarm, block)))
        prev = block.hash
    return out


def reader(decisions: list[Decision]):
    return lambda first, last: [d for d in decisions if first <= d.height <= last]


def anchor_first(swarm: SwarmConfig, decisions: list[Decision], valset_hash: bytes | None = None) -> LedgerClient:
    valset_hash = valset_hash or consensus_valset(swarm).hash()
    ledger = LedgerClient(swarm.ledger_path(), swarm, "v0")
    cp = checkpoint_for(swarm.swarm_id, 1, [d.block.hash for d in decisions[:K]], 1, valset_hash, None)
    ledger.submit(cp, [sign_digest(s, ledger.digest(cp)) for s in SEEDS[:3]])
    return ledger


@pytest.fixture
def setup(tmp_path):
    swarm = make_swarm(tmp_path)
    decisions = chain(swarm, K + 2)  # checkpoint 1 complete and anchored; 2 incomplete
    return swarm, decisions, anchor_first(swarm, decisions)


def test_every_decision_of_an_anchored_checkpoint_is_valid(setup) -> None:
    swarm, decisions, ledger = setup
    for h in range(1, K + 1):
        v = verify(swarm, reader(decisions), str(h), ledger)
        assert v.valid and v.reason is None, v.describe()
        assert v.evidence["checkpoint"] == f"1 (heights 1..{K})"
        assert v.evidence["anchored_root"] and v.evidence["proof"]


def test_a_decision_past_the_last_anchored_checkpoint_is_not_yet_anchored(setup) -> None:
    swarm, decisions, ledger = setup
    assert verify(swarm, reader(decisions), str(K + 1), ledger).reason == "not_yet_anchored"  # range incomplete
    more = chain(swarm, 2 * K)
    assert verify(swarm, reader(more), str(K + 1), ledger).reason == "not_yet_anchored"  # complete, not submitted


def test_a_tampered_decision_has_an_invalid_certificate(setup) -> None:
    swarm, decisions, ledger = setup
    d = decisions[1]
    forged = dataclasses.replace(d, block=Block(d.height, d.block.prev_hash, d.block.proposer, b"another outcome"))
    tampered = decisions[:1] + [forged] + decisions[2:]
    v = verify(swarm, reader(tampered), "2", ledger)
    assert (v.valid, v.reason) == (False, "certificate_invalid")
    weak = dataclasses.replace(d, certificate=certify(swarm, d.block, signers=(0, 1)))
    assert verify(swarm, reader(decisions[:1] + [weak] + decisions[2:]), "2", ledger).reason == "certificate_invalid"


def test_a_tampered_proof_is_not_included(setup) -> None:
    swarm, decisions, ledger = setup
    good = verify(swarm, reader(decisions), "3", ledger)
    proof = InclusionProof.decode(bytes.fromhex(good.evidence["proof"]))
    bent = dataclasses.replace(proof, path=(hashlib.sha256(b"x").digest(),) + tuple(proof.path[1:]))
    v = verify(swarm, reader(decisions), "3", ledger, bent)
    assert (v.valid, v.reason) == (False, "not_included")


def test_blocks_that_differ_from_the_anchored_ones_are_a_root_mismatch(tmp_path, setup) -> None:
    swarm, decisions, ledger = setup
    fork = chain(swarm, K + 2, tag=b"fork ")  # certified too (a compromised quorum, or another swarm's past)
    assert verify(swarm, reader(fork), "2", ledger).reason == "root_mismatch"


def test_an_unreachable_chain_and_a_foreign_anchor(tmp_path, setup) -> None:
    swarm, decisions, ledger = setup

    class Down:
        name = "down"

        def count(self):
            raise ChainUnavailable("connection refused")

    assert verify(swarm, reader(decisions), "1", Down()).reason == "chain_unreachable"
    (tmp_path / "other").mkdir()
    other = dataclasses.replace(swarm, base_dir=tmp_path / "other")
    foreign = anchor_first(other, decisions, valset_hash=hashlib.sha256(b"another set").digest())
    assert verify(swarm, reader(decisions), "1", foreign).reason == "wrong_anchor"
    assert verify(swarm, reader(decisions), "99", ledger).reason == "not_found"
    assert verify(swarm, reader(decisions), "deadbeef", ledger).reason == "not_found"
