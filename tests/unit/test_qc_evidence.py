"""Quorum certificates (strictly more than 2/3 of the power, verifiable by anyone holding
the validator set) and evidence of duplicate votes and proposals."""

from __future__ import annotations

import hashlib

import msgpack
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.evidence import DuplicateProposalEvidence, DuplicateVoteEvidence, find_equivocations
from consensus.qc import QuorumCertificate
from consensus.types import Block, Proposal, SignedProposal, SignedVote, Validator, ValidatorSet, Vote, VoteType

SWARM = hashlib.sha256(b"qc swarm").digest()
OTHER_SWARM = hashlib.sha256(b"another swarm").digest()
SEEDS = [hashlib.sha256(b"qc validator %d" % i).digest() for i in range(10)]
KEYS = [nacl.signing.SigningKey(s) for s in SEEDS]
PKS = [bytes(k.verify_key) for k in KEYS]
V = hashlib.sha256(b"block v").digest()
W = hashlib.sha256(b"block w").digest()
PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT


def valset(*powers: int) -> ValidatorSet:
    return ValidatorSet(tuple(Validator(PKS[i], p) for i, p in enumerate(powers)))


def sv(i: int, value: bytes | None = V, type: VoteType = PRECOMMIT, height: int = 7, round: int = 2,
       swarm: bytes = SWARM, key: int | None = None) -> SignedVote:
    v = Vote(type, height, round, value, i)
    return SignedVote(v, KEYS[i if key is None else key].sign(v.signing_bytes(swarm)).signature)


def qc(*signers: int, n: int = 4, **kw) -> QuorumCertificate:
    return QuorumCertificate.from_votes([sv(i, **kw) for i in signers], n)


EQUAL4 = valset(1, 1, 1, 1)


# --- QuorumCertificate ---------------------------------------------------------------------


def test_a_quorum_certificate_verifies_and_records_its_signers() -> None:
    c = qc(0, 2, 3)
    assert c.verify(EQUAL4, SWARM) is None
    assert (c.type, c.height, c.round, c.value) == (PRECOMMIT, 7, 2, V)
    assert c.indices() == [0, 2, 3]
    assert c.signers == bytes([0b1101])
    assert [x.vote.validator for x in c.votes()] == [0, 2, 3]
    assert all(x.verify(EQUAL4, SWARM) for x in c.votes())
    assert qc(0, 1, 2, 3).verify(EQUAL4, SWARM) is None


def test_signatures_are_in_index_order_whatever_the_input_order() -> None:
    a = QuorumCertificate.from_votes([sv(3), sv(0), sv(2)], 4)
    b = QuorumCertificate.from_votes([sv(0), sv(2), sv(3)], 4)
    assert a == b and a.encode() == b.encode()


def test_a_nil_certificate_verifies_too() -> None:
    assert qc(1, 2, 3, value=None, type=PREVOTE).verify(EQUAL4, SWARM) is None


@pytest.mark.parametrize("powers, signers", [
    ((1, 1, 1), (0, 1)),  # 2 of 3
    ((1, 1, 1, 3), (0, 3)),  # 4 of 6
    ((2, 2, 1, 1), (0, 1)),  # 4 of 6
    ((1, 1, 1, 1, 1, 1), (0, 1, 2, 3)),  # 4 of 6
])
def test_exactly_two_thirds_of_the_power_does_not_verify(powers, signers) -> None:
    vs = valset(*powers)
    assert 3 * vs.power_of(set(signers)) == 2 * vs.total_power
    why = qc(*signers, n=len(powers)).verify(vs, SWARM)
    assert why == "signers hold no more than 2/3 of the power"


def test_more_than_two_thirds_by_power_not_by_count_verifies() -> None:
    vs = valset(1, 1, 1, 4)  # validator 3 alone holds 4/7
    assert qc(0, 3).verify(vs, SWARM) is None  # 5 of 7
    assert qc(0, 1, 2).verify(vs, SWARM) == "signers hold no more than 2/3 of the power"  # 3 of 7


def test_a_forged_signature_fails() -> None:
    c = qc(0, 1, 2)
    forged = QuorumCertificate(c.type, c.height, c.round, c.value, c.signers,
                               (c.signatures[0], sv(1, key=3).signature, c.signatures[2]))
    assert forged.verify(EQUAL4, SWARM) == "bad signature from validator 1"
    zeroed = QuorumCertificate(c.type, c.height, c.round, c.value, c.signers, (bytes(64),) + c.signatures[1:])
    assert zeroed.verify(EQUAL4, SWARM) == "bad signature from validator 0"


def test_a_signer_outside_the_validator_set_fails() -> None:
    c = QuorumCertificate.from_votes([sv(0), sv(1), sv(2), sv(5)], 8)  # one bitmap byte, as for 4
    assert len(c.signers) == 1
    assert c.verify(EQUAL4, SWARM) == "signer outside the validator set"


def test_a_wrong_bitmap_length_fails() -> None:
    assert qc(0, 1, 2, n=16).verify(EQUAL4, SWARM) == "signer bitmap does not match the validator set size"
    nine = valset(*([1] * 9))
    assert qc(0, 1, 2, n=4).verify(nine, SWARM) == "signer bitmap does not match the validator set size"


def test_votes_of_different_values_cannot_make_a_certificate() -> None:
    with pytest.raises(LocalProtocolError):
        QuorumCertificate.from_votes([sv(0), sv(1, value=W), sv(2)], 4)
    with pytest.raises(LocalProtocolError):
        QuorumCertificate.from_votes([sv(0), sv(1, type=PREVOTE), sv(2)], 4)
    with pytest.raises(LocalProtocolError):
        QuorumCertificate.from_votes([sv(0), sv(1, round=3), sv(2)], 4)
    # Smuggled in by hand: validator 1's signature is over w, the certificate says v.
    c = qc(0, 1, 2)
    mixed = QuorumCertificate(c.type, c.height, c.round, c.value, c.signers,
                              (c.signatures[0], sv(1, value=W).signature, c.signatures[2]))
    assert mixed.verify(EQUAL4, SWARM) == "bad signature from validator 1"


def test_a_certificate_of_another_swarm_fails() -> None:
    assert qc(0, 1, 2).verify(EQUAL4, OTHER_SWARM) == "bad signature from validator 0"
    assert qc(0, 1, 2, swarm=OTHER_SWARM).verify(EQUAL4, SWARM) == "bad signature from validator 0"


def test_a_certificate_changed_after_signing_fails() -> None:
    c = qc(0, 1, 2)
    for changed in (
        QuorumCertificate(c.type, c.height, c.round + 1, c.value, c.signers, c.signatures),
        QuorumCertificate(c.type, c.height + 1, c.round, c.value, c.signers, c.signatures),
        QuorumCertificate(PREVOTE, c.height, c.round, c.value, c.signers, c.signatures),
        QuorumCertificate(c.type, c.height, c.round, W, c.signers, c.signatures),
        QuorumCertificate(c.type, c.height, c.round, c.value, bytes([0b1011]), c.signatures),
    ):
        assert changed.verify(EQUAL4, SWARM) is not None


def test_construction_checks_the_shape() -> None:
    c = qc(0, 1, 2)
    with pytest.raises(LocalProtocolError):  # 3 signers, 2 signatures
        QuorumCertificate(c.type, c.height, c.round, c.value, c.signers, c.signatures[:2])
    with pytest.raises(LocalProtocolError):
        QuorumCertificate(c.type, c.height, c.round, c.value, c.signers, (b"x" * 63,) + c.signatures[1:])
    with pytest.raises(LocalProtocolError):
        QuorumCertificate.from_votes([], 4)
    with pytest.raises(LocalProtocolError):
        QuorumCertificate.from_votes([sv(5)], 4)


def test_encode_decode_round_trip_and_garbage() -> None:
    c = qc(0, 2, 3)
    d = QuorumCertificate.decode(c.encode())
    assert d == c and d.verify(EQUAL4, SWARM) is None
    for garbage in (b"", b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([1, 2, 3]),
                    msgpack.packb([9, 7, 2, V, b"\x0d", [c.signatures[0]]]),  # bad vote type
                    msgpack.packb([2, 7, 2, V, b"\x0d", [c.signatures[0]]])):  # 3 signers, 1 signature
        with pytest.raises(RemoteProtocolError) as info:
            QuorumCertificate.decode(garbage)
        assert info.value.reason == "bad_certificate"


@given(
    type=st.sampled_from(list(VoteType)),
    height=st.integers(1, 2**40),
    round=st.integers(0, 2**20),
    value=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    n=st.integers(1, 40),
    data=st.data(),
)
def test_certificate_encoding_round_trips(type, height, round, value, n, data) -> None:
    signers = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
    bitmap = bytearray((n + 7) // 8)
    for i in signers:
        bitmap[i // 8] |= 1 << (i % 8)
    sigs = tuple(data.draw(st.binary(min_size=64, max_size=64)) for _ in signers)
    c = QuorumCertificate(type, height, round, value, bytes(bitmap), sigs)
    d = QuorumCertificate.decode(c.encode())
    assert d == c
    assert d.indices() == signers
    assert [x.signature for x in d.votes()] == list(sigs)


# --- DuplicateVoteEvidence --------------------------------------------------------------------


def test_of_orders_canonically_nil_first() -> None:
    a, b, nil = sv(2, value=V), sv(2, value=W), sv(2, value=None)
    lo, hi = sorted([a, b], key=lambda x: x.vote.value)
    assert DuplicateVoteEvidence.of(a, b) == DuplicateVoteEvidence.of(b, a)
    assert DuplicateVoteEvidence.of(a, b).first == lo and DuplicateVoteEvidence.of(b, a).second == hi
    assert DuplicateVoteEvidence.of(a, b).encode() == DuplicateVoteEvidence.of(b, a).encode()
    e = DuplicateVoteEvidence.of(a, nil)
    assert e.first == nil and e.second == a and e.validator == 2
    with pytest.raises(LocalProtocolError):
        DuplicateVoteEvidence(hi, lo)  # not canonical


def test_evidence_of_a_real_double_vote_verifies() -> None:
    for type in VoteType:
        e = DuplicateVoteEvidence.of(sv(1, value=V, type=type), sv(1, value=None, type=type))
        assert e.verify(EQUAL4, SWARM)
        assert not e.verify(EQUAL4, OTHER_SWARM)


def test_evidence_with_a_forged_signature_does_not_verify() -> None:
    real = sv(1, value=V)
    forged = SignedVote(sv(1, value=W).vote, sv(1, value=W, key=2).signature)  # validator 1 never signed w
    assert not DuplicateVoteEvidence.of(real, forged).verify(EQUAL4, SWARM)
    zeroed = SignedVote(real.vote, bytes(64))
    assert not DuplicateVoteEvidence.of(zeroed, sv(1, value=W)).verify(EQUAL4, SWARM)
    outsider = DuplicateVoteEvidence.of(sv(6, value=V), sv(6, value=W))  # index outside the set
    assert not outsider.verify(EQUAL4, SWARM)


@pytest.mark.parametrize("x, y", [
    pytest.param(sv(1, value=V), sv(1, value=V), id="same value"),
    pytest.param(sv(1, value=None), sv(1, value=None), id="both nil"),
    pytest.param(sv(1, value=V), sv(1, value=W, height=8), id="different height"),
    pytest.param(sv(1, value=V), sv(1, value=W, round=3), id="different round"),
    pytest.param(sv(1, value=V), sv(1, value=W, type=PREVOTE), id="different type"),
    pytest.param(sv(1, value=V), sv(2, value=W), id="different validator"),
])
def test_evidence_rejects_votes_that_are_not_a_double_vote(x, y) -> None:
    with pytest.raises(LocalProtocolError):
        DuplicateVoteEvidence.of(x, y)


def test_evidence_encode_decode_round_trip() -> None:
    e = DuplicateVoteEvidence.of(sv(3, value=W, type=PREVOTE), sv(3, value=V, type=PREVOTE))
    d = DuplicateVoteEvidence.decode(e.encode())
    assert d == e and d.verify(EQUAL4, SWARM)
    assert d.encode() == e.encode()


@pytest.mark.parametrize("garbage", [
    b"",
    b"\xc1",
    b"\x93\x01\x02\x03",
    msgpack.packb([b"a", b"b"]),
    msgpack.packb({"first": 1}),
    msgpack.packb([sv(1).encode()]),
    msgpack.packb([sv(1, value=V).encode(), sv(1, value=V).encode()]),  # not a double vote
    msgpack.packb([sv(1, value=W).encode(), sv(1, value=V).encode()]
                  if W > V else [sv(1, value=V).encode(), sv(1, value=W).encode()]),  # not canonical
])
def test_evidence_decode_garbage_is_a_remote_protocol_error(garbage: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        DuplicateVoteEvidence.decode(garbage)


@given(st.binary(max_size=300))
def test_evidence_decode_never_raises_anything_else(data: bytes) -> None:
    try:
        DuplicateVoteEvidence.decode(data)
    except RemoteProtocolError:
        pass


# --- finding equivocations in traffic ------------------------------------------------------


def test_find_equivocations_reports_each_conflicting_pair_once() -> None:
    traffic = [sv(0), sv(1), sv(0), sv(0, W), sv(0, W), sv(1, W, type=PREVOTE), sv(2, None), sv(2, V, round=3)]
    (ev,) = find_equivocations(traffic, EQUAL4, SWARM)
    assert ev.validator == 0 and {ev.first.vote.value, ev.second.vote.value} == {V, W}
    assert ev.verify(EQUAL4, SWARM)


def test_find_equivocations_ignores_forged_and_honest_traffic() -> None:
    forged = sv(3, W, key=2)  # claims validator 3, signed by 2's key
    assert find_equivocations([sv(3), forged, sv(3, type=PREVOTE)], EQUAL4, SWARM) == []


# --- DuplicateProposalEvidence ----------------------------------------------------------------


def sp(i: int, payload: bytes, height: int = 7, round: int = 2, key: int | None = None) -> SignedProposal:
    p = Proposal(height, round, Block(height, bytes(32), PKS[i], payload), -1, i)
    return SignedProposal(p, KEYS[i if key is None else key].sign(p.signing_bytes(SWARM)).signature)


def test_proposal_evidence_is_canonical_verifies_and_round_trips() -> None:
    proposer = EQUAL4.proposer(7, 2)
    a, b = sp(proposer, b"one"), sp(proposer, b"two")
    e = DuplicateProposalEvidence.of(a, b)
    assert e == DuplicateProposalEvidence.of(b, a) and e.validator == proposer
    assert (e.kind, e.height, e.round) == ("proposal", 7, 2)
    assert e.verify(EQUAL4, SWARM) and not e.verify(EQUAL4, OTHER_SWARM)
    assert DuplicateProposalEvidence.decode(e.encode()) == e
    lo, hi = sorted((a, b), key=lambda x: x.proposal.block.hash)
    with pytest.raises(LocalProtocolError, match="canonical"):
        DuplicateProposalEvidence(hi, lo)


@pytest.mark.parametrize("pair, why", [
    (lambda p: (sp(p, b"one"), sp(p, b"one")), "differ"),
    (lambda p: (sp(p, b"one"), sp(p, b"two", round=3)), "share"),
    (lambda p: (sp(p, b"one"), sp((p + 1) % 4, b"two")), "share"),
])
def test_proposal_evidence_needs_one_proposer_one_round_two_blocks(pair, why) -> None:
    x, y = pair(EQUAL4.proposer(7, 2))
    with pytest.raises(LocalProtocolError, match=why):
        DuplicateProposalEvidence.of(x, y)


def test_proposal_evidence_with_a_forged_signature_or_from_a_non_proposer_does_not_verify() -> None:
    proposer = EQUAL4.proposer(7, 2)
    forged = sp(proposer, b"two", key=(proposer + 1) % 4)
    assert not DuplicateProposalEvidence.of(sp(proposer, b"one"), forged).verify(EQUAL4, SWARM)
    other = (proposer + 1) % 4  # signed by itself, but not the proposer of 7/2
    assert not DuplicateProposalEvidence.of(sp(other, b"one"), sp(other, b"two")).verify(EQUAL4, SWARM)


@pytest.mark.parametrize("data", [b"", b"\x90", b"\x92\xc4\x01x\xc4\x01y"])
def test_malformed_proposal_evidence_is_a_remote_error(data) -> None:
    with pytest.raises(RemoteProtocolError):
        DuplicateProposalEvidence.decode(data)
