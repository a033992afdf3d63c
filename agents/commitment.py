"""Commit-reveal for ballots: nobody can copy another agent's answer.

An agent first publishes a ``Commitment`` to its ballot, then, once the commit phase
closes, the ``Reveal``: the signed ballot and the salt. The digest is::

    sha256(b"conclave/ballot-commitment/v1\\x00" + salt + ballot.signing_bytes() + ballot.signature)

The ballot's signature is inside the digest because the thing revealed *is* the signed
ballot: a reveal must be byte-for-byte what was committed, signature included, so no
one can later pass off a different (re-signed or re-encoded) ballot under an old
commitment. The 32-byte salt keeps the digest hiding: a motion has few options, and
without it anyone could hash each candidate ballot and compare. Callers draw the salt
(``os.urandom(32)``) and keep it until the reveal; this module never draws randomness.

The commitment itself is signed by the voter over its own domain
(``b"conclave/commitment/v1\\x00"``), so it can be attributed and, if a voter commits
twice to different ballots for one motion, shown as evidence.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass

import msgpack

from agents.ballot import ID_BYTES, Ballot, BallotError
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature
from p2p.messages import decode_payload_map

DIGEST_DOMAIN = b"conclave/ballot-commitment/v1\x00"
SIGNING_DOMAIN = b"conclave/commitment/v1\x00"
SALT_BYTES = 32
DIGEST_BYTES = 32
# Reveals remembered by their bytes: a block of 128 resolutions at n=16 carries 2048,
# received as ballots before it. At most a few KB each.
DECODED_REVEALS = 4096


class CommitmentError(BallotError):
    """Base class of commit-reveal failures."""


class RevealMismatch(CommitmentError):
    """A reveal does not open its commitment. ``field`` says which check failed:
    ``commitment_signature``, ``voter``, ``swarm``, ``motion``, ``ballot_signature``
    or ``digest``."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"reveal does not match its commitment ({field}): {detail}")
        self.field = field


def _check_bytes(name: str, value: object, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise LocalProtocolError(f"{name} must be {size} bytes")


def commitment_digest(ballot: Ballot, salt: bytes) -> bytes:
    _check_bytes("salt", salt, SALT_BYTES)
    return hashlib.sha256(DIGEST_DOMAIN + salt + ballot.signing_bytes() + ballot.signature).digest()


@dataclass(frozen=True, slots=True)
class Commitment:
    swarm_id: bytes
    motion_id: bytes
    voter: bytes
    digest: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_bytes("swarm_id", self.swarm_id, ID_BYTES)
        _check_bytes("motion_id", self.motion_id, ID_BYTES)
        _check_bytes("voter", self.voter, PUBLIC_KEY_BYTES)
        _check_bytes("digest", self.digest, DIGEST_BYTES)
        _check_bytes("signature", self.signature, SIGNATURE_BYTES)

    @classmethod
    def sign(cls, identity: Identity, *, swarm_id: bytes, motion_id: bytes, digest: bytes) -> Commitment:
        unsigned = cls(swarm_id, motion_id, identity.public_key, digest, bytes(SIGNATURE_BYTES))
        return dataclasses.replace(unsigned, signature=identity.sign(unsigned.signing_bytes()))

    def signing_bytes(self) -> bytes:
        body = [self.swarm_id, self.motion_id, self.voter, self.digest]
        return SIGNING_DOMAIN + msgpack.packb(body, use_bin_type=True)

    def verify(self) -> bool:
        return verify_signature(self.voter, self.signing_bytes(), self.signature)

    def encode(self) -> bytes:
        return msgpack.packb({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Commitment:
        doc = decode_payload_map(data, "commitment")
        try:
            return cls(*(doc.get(f.name) for f in dataclasses.fields(cls)))
        except LocalProtocolError as exc:
            raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"commitment: {exc}") from None


@dataclass(frozen=True, slots=True)
class Reveal:
    ballot: Ballot
    salt: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.ballot, Ballot):
            raise LocalProtocolError("a reveal's ballot must be a Ballot")
        _check_bytes("salt", self.salt, SALT_BYTES)

    def encode(self) -> bytes:
        return msgpack.packb({"ballot": self.ballot.encode(), "salt": self.salt}, use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Reveal:
        # A reveal is decoded when it arrives and again in each block that carries it:
        # the same bytes give the same (immutable) Reveal. Failures are not remembered.
        return _decode_reveal(data)

    @classmethod
    def _decode(cls, data: bytes) -> Reveal:
        doc = decode_payload_map(data, "reveal")
        inner = doc.get("ballot")
        if not isinstance(inner, bytes):
            raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, "reveal: field 'ballot' must be bytes")
        ballot = Ballot.decode(inner)  # raises RemoteProtocolError itself
        try:
            return cls(ballot, doc.get("salt"))
        except LocalProtocolError as exc:
            raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"reveal: {exc}") from None


@functools.lru_cache(maxsize=DECODED_REVEALS)
def _decode_reveal(data: bytes) -> Reveal:
    return Reveal._decode(data)


def commit(ballot: Ballot, salt: bytes, identity: Identity) -> Commitment:
    """The signed commitment to ``ballot`` (which ``identity`` must have signed)."""
    if identity.public_key != ballot.voter:
        raise LocalProtocolError("commit: the identity is not the ballot's voter")
    if not ballot.verify():
        raise LocalProtocolError("commit: the ballot's signature is invalid; sign it before committing")
    return Commitment.sign(identity, swarm_id=ballot.swarm_id, motion_id=ballot.motion_id,
                           digest=commitment_digest(ballot, salt))


def check_reveal(commitment: Commitment, reveal: Reveal) -> None:
    """Raise ``RevealMismatch`` naming the first check that fails; return if all pass."""
    ballot = reveal.ballot
    if not commitment.verify():
        raise RevealMismatch("commitment_signature", "the commitment is not signed by its voter")
    if ballot.voter != commitment.voter:
        raise RevealMismatch("voter", f"ballot voter {ballot.voter.hex()[:16]}... "
                             f"is not the committer {commitment.voter.hex()[:16]}...")
    if ballot.swarm_id != commitment.swarm_id:
        raise RevealMismatch("swarm", "the ballot is for another swarm")
    if ballot.motion_id != commitment.motion_id:
        raise RevealMismatch("motion", f"the ballot is for motion {ballot.motion_id.hex()[:16]}..., "
                             f"the commitment for {commitment.motion_id.hex()[:16]}...")
    if not ballot.verify():
        raise RevealMismatch("ballot_signature", "the revealed ballot's signature is invalid")
    if commitment_digest(ballot, reveal.salt) != commitment.digest:
        raise RevealMismatch("digest", "the revealed ballot and salt do not hash to the committed digest")
