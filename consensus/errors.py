"""Errors of the consensus core, split by who is at fault (as h11 does)."""

from __future__ import annotations


class ConsensusError(Exception):
    """Base class of the errors this package raises on purpose."""


class LocalProtocolError(ConsensusError):
    """Our own code misused the core (a bug or a bad argument on our side)."""


class RemoteProtocolError(ConsensusError):
    """A peer's message is invalid. ``reason`` is short and machine-readable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ConflictingVoteError(LocalProtocolError):
    """The safety rules refused to sign something that conflicts with what this
    validator signed before (same height and round and step, different value, or an
    earlier step): signing it would make us equivocate."""
