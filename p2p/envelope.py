"""The one envelope every message travels in, and its canonical signed encoding.

Wire form (msgpack, one array, see docs/wire-format.md):

    [version, swarm_id, type, sender, seq, payload, signature]

The signature covers a domain-separated encoding that names the protocol, its version,
the swarm and the message type, so a signature made for one swarm or one type is
useless in another.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

import msgpack

from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError
from p2p.keys import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_signature

ENVELOPE_VERSION = 1
SWARM_ID_BYTES = 32
SIGNING_DOMAIN = b"conclave/envelope/v1\x00"
MAX_SEQ = 2**64 - 1
_FIELDS = 7


class MessageType(enum.IntEnum):
    """Envelope message types. Numbers are part of the wire format: never reuse one."""

    MOTION = 1
    STATUS = 2
    PROPOSAL = 3  # consensus.types.SignedProposal
    VOTE = 4  # consensus.types.SignedVote (the signer may differ from the sender: relays)
    BALLOT_COMMIT = 5  # agents.commitment.Commitment
    BALLOT_REVEAL = 6  # agents.commitment.Reveal
    CHECKPOINT_SIGNATURE = 7  # agents.checkpoint_signature.CheckpointSignature


@dataclass(frozen=True, slots=True)
class Envelope:
    version: int
    swarm_id: bytes
    type: int
    sender: bytes
    seq: int
    payload: bytes
    signature: bytes

    def __post_init__(self) -> None:
        if not _is_uint(self.version):
            raise LocalProtocolError(f"version must be a non-negative int, got {self.version!r}")
        if not isinstance(self.swarm_id, bytes) or len(self.swarm_id) != SWARM_ID_BYTES:
            raise LocalProtocolError(f"swarm_id must be {SWARM_ID_BYTES} bytes")
        if not _is_uint(self.type):
            raise LocalProtocolError(f"type must be a non-negative int, got {self.type!r}")
        if not isinstance(self.sender, bytes) or len(self.sender) != PUBLIC_KEY_BYTES:
            raise LocalProtocolError(f"sender must be a {PUBLIC_KEY_BYTES}-byte public key")
        if not _is_uint(self.seq) or self.seq > MAX_SEQ:
            raise LocalProtocolError(f"seq must be a uint64, got {self.seq!r}")
        if not isinstance(self.payload, bytes):
            raise LocalProtocolError("payload must be bytes")
        if not isinstance(self.signature, bytes) or len(self.signature) != SIGNATURE_BYTES:
            raise LocalProtocolError(f"signature must be {SIGNATURE_BYTES} bytes")

    @classmethod
    def seal(
        cls, identity: Identity, swarm_id: bytes, type: MessageType, seq: int, payload: bytes
    ) -> Envelope:
        """Build and sign an envelope from ``identity``."""
        body = signing_bytes(ENVELOPE_VERSION, swarm_id, int(type), identity.public_key, seq, payload)
        return cls(ENVELOPE_VERSION, swarm_id, int(type), identity.public_key, seq, payload, identity.sign(body))

    def signed_bytes(self) -> bytes:
        return signing_bytes(self.version, self.swarm_id, self.type, self.sender, self.seq, self.payload)

    def signature_valid(self) -> bool:
        return verify_signature(self.sender, self.signed_bytes(), self.signature)

    @property
    def message_id(self) -> bytes:
        """Our own message id: stable across relays and independent of libp2p's."""
        return hashlib.sha256(self.signed_bytes()).digest()

    def encode(self) -> bytes:
        return msgpack.packb(
            [self.version, self.swarm_id, self.type, self.sender, self.seq, self.payload, self.signature],
            use_bin_type=True,
        )


def _is_uint(value: object) -> bool:
    # msgpack decodes true/false as bool, which Python counts as an int: refuse it, or
    # [true, ...] would be a second, non-canonical spelling of version 1 (type 1, seq 1).
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def signing_bytes(version: int, swarm_id: bytes, type: int, sender: bytes, seq: int, payload: bytes) -> bytes:
    return SIGNING_DOMAIN + msgpack.packb([version, swarm_id, type, sender, seq, payload], use_bin_type=True)


def decode_envelope(data: bytes) -> Envelope:
    """Parse wire bytes. Raises ``RemoteProtocolError`` (undecodable) on any malformation."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=len(data), max_str_len=0)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise RemoteProtocolError(RejectReason.UNDECODABLE, f"not msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, list) or len(obj) != _FIELDS:
        raise RemoteProtocolError(RejectReason.UNDECODABLE, f"envelope must be an array of {_FIELDS}")
    try:
        return Envelope(*obj)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(RejectReason.UNDECODABLE, str(exc)) from None
