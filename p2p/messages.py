"""Payloads carried in envelopes, and who may send each type.

Each payload is a msgpack map with string keys, so fields can be added later without
breaking older readers (unknown keys are ignored; missing required keys are an error).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgpack

from consensus.errors import RemoteProtocolError as ConsensusRemoteError
from consensus.types import SignedProposal, SignedVote
from p2p.envelope import MessageType
from p2p.errors import LocalProtocolError, RejectReason, RemoteProtocolError

MAX_MOTION_TEXT = 4000
MAX_OPTIONS = 16
MAX_OPTION_LEN = 64
DEFAULT_OPTIONS = ("approve", "reject")
NO_SUPERMAJORITY = "no-supermajority"  # a motion's outcome when no option has > 2/3 of the power


class Senders(enum.Enum):
    ANYONE = "anyone"  # clients and observers too, rate-limited per sender
    VALIDATORS = "validators"


SENDERS: dict[MessageType, Senders] = {
    MessageType.MOTION: Senders.ANYONE,
    MessageType.STATUS: Senders.VALIDATORS,
    MessageType.PROPOSAL: Senders.VALIDATORS,
    MessageType.VOTE: Senders.VALIDATORS,
    MessageType.BALLOT_COMMIT: Senders.VALIDATORS,
    MessageType.BALLOT_REVEAL: Senders.VALIDATORS,
    MessageType.CHECKPOINT_SIGNATURE: Senders.VALIDATORS,
}


def _check_options(options: tuple[str, ...]) -> None:
    if not 2 <= len(options) <= MAX_OPTIONS:
        raise LocalProtocolError(f"a motion needs 2 to {MAX_OPTIONS} options, got {len(options)}")
    for opt in options:
        if not isinstance(opt, str) or not opt.strip() or opt != opt.strip():
            raise LocalProtocolError(f"option {opt!r} is empty or has surrounding spaces")
        if len(opt) > MAX_OPTION_LEN:
            raise LocalProtocolError(f"option {opt[:20]!r}... is longer than {MAX_OPTION_LEN}")
    if len(set(options)) != len(options):
        raise LocalProtocolError(f"options must be distinct, got {list(options)}")
    if NO_SUPERMAJORITY in options:
        # The outcome when no option wins: an option of that name would be ambiguous.
        raise LocalProtocolError(f"{NO_SUPERMAJORITY!r} is reserved and cannot be an option")


@dataclass(frozen=True, slots=True)
class Motion:
    """A question put to the swarm, with the answers it allows."""

    text: str
    options: tuple[str, ...] = DEFAULT_OPTIONS

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise LocalProtocolError("a motion's text must not be empty")
        if len(self.text) > MAX_MOTION_TEXT:
            raise LocalProtocolError(f"a motion's text is limited to {MAX_MOTION_TEXT} characters")
        if not isinstance(self.options, tuple):
            raise LocalProtocolError("options must be a tuple")
        _check_options(self.options)

    def encode(self) -> bytes:
        return msgpack.packb({"text": self.text, "options": list(self.options)})

    @classmethod
    def decode(cls, data: bytes) -> Motion:
        doc = decode_payload_map(data, "motion")
        options = doc.get("options")
        try:
            return cls(doc.get("text"), tuple(options) if isinstance(options, list) else options)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"motion: {exc}") from None


@dataclass(frozen=True, slots=True)
class Status:
    """A validator's periodic announcement: liveness and what it runs."""

    name: str
    agent_version: str
    listen_addrs: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > 64:
            raise LocalProtocolError("status name must be 1 to 64 characters")
        if not isinstance(self.agent_version, str) or len(self.agent_version) > 64:
            raise LocalProtocolError("status agent_version must be at most 64 characters")
        if not isinstance(self.listen_addrs, tuple) or len(self.listen_addrs) > 16:
            raise LocalProtocolError("status listen_addrs must be a tuple of at most 16")
        if not all(isinstance(a, str) and len(a) <= 256 for a in self.listen_addrs):
            raise LocalProtocolError("status listen_addrs must be strings of at most 256 characters")

    def encode(self) -> bytes:
        return msgpack.packb(
            {"name": self.name, "agent_version": self.agent_version, "listen_addrs": list(self.listen_addrs)}
        )

    @classmethod
    def decode(cls, data: bytes) -> Status:
        doc = decode_payload_map(data, "status")
        addrs = doc.get("listen_addrs")
        try:
            return cls(doc.get("name"), doc.get("agent_version"), tuple(addrs) if isinstance(addrs, list) else addrs)
        except LocalProtocolError as exc:
            raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"status: {exc}") from None


def _consensus_decoder(decode):
    """The consensus package's own decoders raise its own error type: convert, so the
    gate counts a malformed proposal or vote as ``bad_payload`` like any other."""

    def wrapped(data: bytes):
        try:
            return decode(data)
        except ConsensusRemoteError as exc:
            raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, str(exc)) from None

    return wrapped


Payload = object  # Motion | Status | SignedProposal | SignedVote | what the agents' decoders return

# What this package can decode. The ballot types (commit, reveal) are decoded by the
# agents' gate, which passes its own table; a type missing from a validator's table is
# rejected as ``unknown_type``.
DECODERS = {
    MessageType.MOTION: Motion.decode,
    MessageType.STATUS: Status.decode,
    MessageType.PROPOSAL: _consensus_decoder(SignedProposal.decode),
    MessageType.VOTE: _consensus_decoder(SignedVote.decode),
}


def decode_payload_map(data: bytes, what: str) -> dict:
    """A msgpack map payload, or ``RemoteProtocolError(BAD_PAYLOAD)`` naming ``what``."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"{what}: not msgpack ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise RemoteProtocolError(RejectReason.BAD_PAYLOAD, f"{what}: payload must be a map")
    return doc
