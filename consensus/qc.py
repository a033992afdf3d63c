"""Quorum certificates: the signatures of validators holding more than 2/3 of the power
on one (swarm, height, round, type, value). Compact: a bitmap of signer indices and
their signatures in index order. Anyone with the validator set can verify one."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.types import SIG_BYTES, SignedVote, ValidatorSet, Vote, VoteType, pack, unpack


@dataclass(frozen=True, slots=True)
class QuorumCertificate:
    type: VoteType
    height: int
    round: int
    value: bytes | None
    signers: bytes  # bitmap, bit i (LSB first in byte i // 8) = validator i signed
    signatures: tuple[bytes, ...]  # in ascending validator index

    def __post_init__(self) -> None:
        Vote(self.type, self.height, self.round, self.value, 0)  # validates the shared fields
        if not isinstance(self.signers, bytes):
            raise LocalProtocolError("signers must be a bitmap")
        if len(self.signatures) != len(self.indices()):
            raise LocalProtocolError("one signature per signer is needed")
        if not all(isinstance(s, bytes) and len(s) == SIG_BYTES for s in self.signatures):
            raise LocalProtocolError(f"each signature is {SIG_BYTES} bytes")

    @classmethod
    def from_votes(cls, votes: Iterable[SignedVote], n: int) -> QuorumCertificate:
        """Build a certificate from votes that all agree on (type, height, round, value)."""
        by_index = {sv.vote.validator: sv for sv in votes}
        if not by_index:
            raise LocalProtocolError("a certificate needs at least one vote")
        first = next(iter(by_index.values())).vote
        bitmap = bytearray((n + 7) // 8)
        for i, sv in by_index.items():
            v = sv.vote
            if (v.type, v.height, v.round, v.value) != (first.type, first.height, first.round, first.value):
                raise LocalProtocolError("all votes of a certificate must be for the same thing")
            if i >= n:
                raise LocalProtocolError(f"validator index {i} outside a set of {n}")
            bitmap[i // 8] |= 1 << (i % 8)
        sigs = tuple(by_index[i].signature for i in sorted(by_index))
        return cls(first.type, first.height, first.round, first.value, bytes(bitmap), sigs)

    def indices(self) -> list[int]:
        return [i for i in range(len(self.signers) * 8) if self.signers[i // 8] >> (i % 8) & 1]

    def votes(self) -> list[SignedVote]:
        return [
            SignedVote(Vote(self.type, self.height, self.round, self.value, i), sig)
            for i, sig in zip(self.indices(), self.signatures, strict=True)
        ]

    def verify(self, valset: ValidatorSet, swarm_id: bytes) -> str | None:
        """None if valid, else why not (for messages and for `conclave verify`)."""
        if len(self.signers) != (len(valset) + 7) // 8:
            return "signer bitmap does not match the validator set size"
        indices = self.indices()
        if indices and indices[-1] >= len(valset):
            return "signer outside the validator set"
        if not valset.is_quorum(valset.power_of(set(indices))):
            return "signers hold no more than 2/3 of the power"
        for sv in self.votes():
            if not sv.verify(valset, swarm_id):
                return f"bad signature from validator {sv.vote.validator}"
        return None

    def encode(self) -> bytes:
        return pack([int(self.type), self.height, self.round, self.value, self.signers, list(self.signatures)])

    @classmethod
    def decode(cls, data: bytes) -> QuorumCertificate:
        obj = unpack(data, "certificate")
        try:
            vtype, height, round, value, signers, signatures = obj
            return cls(VoteType(vtype), height, round, value, signers, tuple(signatures))
        except (TypeError, ValueError, LocalProtocolError) as exc:
            raise RemoteProtocolError("bad_certificate", str(exc)) from None
