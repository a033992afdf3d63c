"""Evidence of equivocation: two signed votes by one validator for the same height,
round and type but different values, or two signed proposals by one proposer for the
same height and round but different blocks. Anyone holding the validator set can check
it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.types import SignedProposal, SignedVote, ValidatorSet, pack, unpack


@dataclass(frozen=True, slots=True)
class DuplicateVoteEvidence:
    """Canonical order (``first.value`` sorts before ``second.value``, nil first) so the
    same misbehaviour always yields the same evidence bytes."""

    first: SignedVote
    second: SignedVote

    def __post_init__(self) -> None:
        a, b = self.first.vote, self.second.vote
        if (a.validator, a.height, a.round, a.type) != (b.validator, b.height, b.round, b.type):
            raise LocalProtocolError("evidence votes must share validator, height, round and type")
        if a.value == b.value:
            raise LocalProtocolError("evidence votes must differ in value")
        if _key(a.value) > _key(b.value):
            raise LocalProtocolError("evidence votes must be in canonical order (use DuplicateVoteEvidence.of)")

    @classmethod
    def of(cls, x: SignedVote, y: SignedVote) -> DuplicateVoteEvidence:
        return cls(x, y) if _key(x.vote.value) <= _key(y.vote.value) else cls(y, x)

    @property
    def validator(self) -> int:
        return self.first.vote.validator

    @property
    def kind(self) -> str:
        """What was signed twice: "prevote" or "precommit"."""
        return self.first.vote.type.name.lower()

    @property
    def height(self) -> int:
        return self.first.vote.height

    @property
    def round(self) -> int:
        return self.first.vote.round

    def verify(self, valset: ValidatorSet, swarm_id: bytes) -> bool:
        return self.first.verify(valset, swarm_id) and self.second.verify(valset, swarm_id)

    def encode(self) -> bytes:
        return pack([self.first.encode(), self.second.encode()])

    @classmethod
    def decode(cls, data: bytes) -> DuplicateVoteEvidence:
        return _decode_pair(data, SignedVote.decode, cls)


@dataclass(frozen=True, slots=True)
class DuplicateProposalEvidence:
    """Canonical order (``first``'s block hash sorts before ``second``'s). A proposer
    signs at most one proposal per height and round (Tendermint L19 runs once per
    round); ours are checked by ``consensus.safety`` before signing, across restarts."""

    first: SignedProposal
    second: SignedProposal

    def __post_init__(self) -> None:
        a, b = self.first.proposal, self.second.proposal
        if (a.proposer, a.height, a.round) != (b.proposer, b.height, b.round):
            raise LocalProtocolError("evidence proposals must share proposer, height and round")
        if a.block.hash == b.block.hash:
            raise LocalProtocolError("evidence proposals must differ in block")
        if a.block.hash > b.block.hash:
            raise LocalProtocolError("evidence proposals must be in canonical order (use DuplicateProposalEvidence.of)")

    @classmethod
    def of(cls, x: SignedProposal, y: SignedProposal) -> DuplicateProposalEvidence:
        return cls(x, y) if x.proposal.block.hash <= y.proposal.block.hash else cls(y, x)

    @property
    def validator(self) -> int:
        return self.first.proposal.proposer

    kind = "proposal"

    @property
    def height(self) -> int:
        return self.first.proposal.height

    @property
    def round(self) -> int:
        return self.first.proposal.round

    def verify(self, valset: ValidatorSet, swarm_id: bytes) -> bool:
        """Both signatures by the proposer of that height and round."""
        p = self.first.proposal
        if p.proposer >= len(valset) or valset.proposer(p.height, p.round) != p.proposer:
            return False
        return self.first.verify(valset, swarm_id) and self.second.verify(valset, swarm_id)

    def encode(self) -> bytes:
        return pack([self.first.encode(), self.second.encode()])

    @classmethod
    def decode(cls, data: bytes) -> DuplicateProposalEvidence:
        return _decode_pair(data, SignedProposal.decode, cls)


Evidence = DuplicateVoteEvidence | DuplicateProposalEvidence


def find_equivocations(votes: Iterable[SignedVote], valset: ValidatorSet, swarm_id: bytes) -> list[DuplicateVoteEvidence]:
    """Every pair of validly signed votes in ``votes`` (any traffic: a whole run's) by
    one validator for one (height, round, type) with different values, as evidence;
    votes whose signature does not verify prove nothing and are skipped."""
    seen: dict[tuple[int, int, int, int], SignedVote] = {}
    found: dict[bytes, DuplicateVoteEvidence] = {}
    for sv in votes:
        if not sv.verify(valset, swarm_id):
            continue
        v = sv.vote
        key = (v.validator, v.height, v.round, int(v.type))
        first = seen.setdefault(key, sv)
        if first.vote.value != v.value:
            ev = DuplicateVoteEvidence.of(first, sv)
            found.setdefault(ev.encode(), ev)
    return list(found.values())


def _decode_pair(data: bytes, decode_one, make):
    """Two signed messages packed as one list (both kinds of evidence encode so)."""
    obj = unpack(data, "evidence")
    try:
        first, second = obj
        return make(decode_one(first), decode_one(second))
    except (TypeError, ValueError, LocalProtocolError) as exc:
        raise RemoteProtocolError("bad_evidence", str(exc)) from None


def _key(value: bytes | None) -> bytes:
    return b"" if value is None else value
