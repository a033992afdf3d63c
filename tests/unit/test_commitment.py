"""Commit-reveal: agents/commitment.py."""

from __future__ import annotations

import dataclasses
import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ballot import Ballot, BallotError, ModelFingerprint, Sampling, motion_digest
from agents.commitment import (
    DIGEST_DOMAIN,
    SIGNING_DOMAIN,
    Commitment,
    CommitmentError,
    Reveal,
    RevealMismatch,
    check_reveal,
    commit,
    commitment_digest,
)
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.keys import Identity

ALICE = Identity(b"\x01" * 32)
BOB = Identity(b"\x02" * 32)
SWARM = hashlib.sha256(b"swarm").digest()
SALT = bytes(range(32))
OTHER_SALT = bytes(range(1, 33))
FP = ModelFingerprint("ab" * 32, 2048, Sampling(), "conclave-prompt/1", "cd" * 32, "ef" * 32, "0.3.16")


def ballot(identity: Identity = ALICE, **changes) -> Ballot:
    fields = dict(swarm_id=SWARM, motion_id=motion_digest("Ship it?", ("approve", "reject")), motion_text="Ship it?",
                  options=("approve", "reject"), choice="approve", reason="Tested.", fingerprint=FP)
    fields.update(changes)
    return Ballot.sign(identity, **fields)


def test_good_reveal_is_accepted():
    b = ballot()
    c = commit(b, SALT, ALICE)
    assert c.verify() and c.voter == ALICE.public_key
    assert (c.swarm_id, c.motion_id) == (b.swarm_id, b.motion_id)
    check_reveal(c, Reveal(b, SALT))  # does not raise


def test_digest_is_the_documented_hash_including_the_signature():
    b = ballot()
    expected = hashlib.sha256(b"conclave/ballot-commitment/v1\x00" + SALT + b.signing_bytes() + b.signature).digest()
    assert DIGEST_DOMAIN == b"conclave/ballot-commitment/v1\x00"
    assert commitment_digest(b, SALT) == expected == commit(b, SALT, ALICE).digest


def test_commitment_signature_covers_its_own_domain():
    c = commit(ballot(), SALT, ALICE)
    assert c.signing_bytes() == SIGNING_DOMAIN + msgpack.packb([c.swarm_id, c.motion_id, c.voter, c.digest],
                                                               use_bin_type=True)
    for change in (dict(digest=bytes(32)), dict(motion_id=bytes(32)), dict(swarm_id=bytes(32)),
                   dict(voter=BOB.public_key)):
        assert not dataclasses.replace(c, **change).verify()


def test_digest_depends_on_salt_and_ballot():
    b = ballot()
    assert commitment_digest(b, SALT) == commitment_digest(ballot(), SALT)  # deterministic
    assert commitment_digest(b, SALT) != commitment_digest(b, OTHER_SALT)
    assert commitment_digest(b, SALT) != commitment_digest(ballot(choice="reject"), SALT)


def expect_mismatch(commitment: Commitment, reveal: Reveal, field: str, words: str) -> None:
    with pytest.raises(RevealMismatch) as info:
        check_reveal(commitment, reveal)
    assert info.value.field == field
    assert words in str(info.value) and f"({field})" in str(info.value)


def test_wrong_salt_is_rejected():
    b = ballot()
    expect_mismatch(commit(b, SALT, ALICE), Reveal(b, OTHER_SALT), "digest", "do not hash to the committed digest")


def test_altered_and_resigned_ballot_is_rejected():
    c = commit(ballot(), SALT, ALICE)
    expect_mismatch(c, Reveal(ballot(choice="reject"), SALT), "digest", "committed digest")
    expect_mismatch(c, Reveal(ballot(reason="Changed my mind."), SALT), "digest", "committed digest")


def test_altered_ballot_without_signature_is_rejected():
    b = ballot()
    c = commit(b, SALT, ALICE)
    tampered = dataclasses.replace(b, choice="reject")
    expect_mismatch(c, Reveal(tampered, SALT), "ballot_signature", "signature is invalid")


def test_other_voters_ballot_is_rejected():
    c = commit(ballot(), SALT, ALICE)
    expect_mismatch(c, Reveal(ballot(BOB), SALT), "voter", "is not the committer")


def test_ballot_for_another_motion_is_rejected():
    c = commit(ballot(), SALT, ALICE)
    other = ballot(motion_id=motion_digest("Other?", ("approve", "reject")))
    expect_mismatch(c, Reveal(other, SALT), "motion", "the ballot is for motion")


def test_ballot_for_another_swarm_is_rejected():
    c = commit(ballot(), SALT, ALICE)
    expect_mismatch(c, Reveal(ballot(swarm_id=bytes(32)), SALT), "swarm", "another swarm")


def test_forged_commitment_is_rejected():
    b = ballot()
    forged = dataclasses.replace(commit(b, SALT, ALICE), signature=BOB.sign(b"anything"))
    expect_mismatch(forged, Reveal(b, SALT), "commitment_signature", "not signed by its voter")


def test_commit_checks_its_inputs():
    b = ballot()
    with pytest.raises(LocalProtocolError, match="not the ballot's voter"):
        commit(b, SALT, BOB)
    with pytest.raises(LocalProtocolError, match="salt must be 32 bytes"):
        commit(b, SALT[:16], ALICE)
    with pytest.raises(LocalProtocolError, match="signature is invalid"):
        commit(dataclasses.replace(b, reason="edited"), SALT, ALICE)
    with pytest.raises(LocalProtocolError, match="salt must be 32 bytes"):
        Reveal(b, "00" * 32)
    with pytest.raises(LocalProtocolError, match="must be a Ballot"):
        Reveal(b.encode(), SALT)
    with pytest.raises(LocalProtocolError, match="digest must be 32 bytes"):
        Commitment(SWARM, SWARM, ALICE.public_key, b"x", bytes(64))


def test_error_hierarchy():
    assert issubclass(RevealMismatch, CommitmentError) and issubclass(CommitmentError, BallotError)


# --- wire round trips -----------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(salt=st.binary(min_size=32, max_size=32), choice=st.sampled_from(["approve", "reject"]),
       who=st.sampled_from([ALICE, BOB]))
def test_round_trips_and_reveal_after_decoding(salt, choice, who):
    b = ballot(who, choice=choice)
    c = commit(b, salt, who)
    c2 = Commitment.decode(c.encode())
    r2 = Reveal.decode(Reveal(b, salt).encode())
    assert c2 == c and c2.verify()
    assert r2 == Reveal(b, salt)
    check_reveal(c2, r2)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("data", [
    b"\xc1", pack([1]), pack({"swarm_id": SWARM}),
    pack({"swarm_id": SWARM, "motion_id": SWARM, "voter": ALICE.public_key, "digest": SWARM, "signature": b"x"}),
])
def test_commitment_decode_rejects_garbage(data):
    with pytest.raises(RemoteProtocolError) as info:
        Commitment.decode(data)
    assert info.value.reason is RejectReason.BAD_PAYLOAD


@pytest.mark.parametrize("data", [
    b"\xc1", pack({"salt": SALT}), pack({"ballot": "text", "salt": SALT}), pack({"ballot": b"\x00", "salt": SALT}),
    pack({"ballot": ballot().encode(), "salt": b"short"}),
])
def test_reveal_decode_rejects_garbage(data):
    with pytest.raises(RemoteProtocolError) as info:
        Reveal.decode(data)
    assert info.value.reason is RejectReason.BAD_PAYLOAD
