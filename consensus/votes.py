"""Vote bookkeeping for one height: who voted what in each round, the power behind each
value, the senders seen per round (for round skipping), and equivocation evidence."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from consensus.evidence import DuplicateVoteEvidence
from consensus.types import SignedVote, ValidatorSet, VoteType


@dataclass(slots=True)
class _RoundVotes:
    votes: dict[VoteType, dict[int, SignedVote]] = field(default_factory=lambda: {t: {} for t in VoteType})
    power: dict[tuple[VoteType, bytes | None], int] = field(default_factory=lambda: defaultdict(int))
    power_any: dict[VoteType, int] = field(default_factory=lambda: defaultdict(int))
    # An equivocator's votes for other values than its first: (type, value) -> index -> vote.
    others: dict[tuple[VoteType, bytes | None], dict[int, SignedVote]] = field(default_factory=dict)


class VoteKeeper:
    """Keeps the first vote of each validator per (round, type). A different second vote
    is evidence; it still counts toward *its own value* (Algorithm 1 counts messages:
    "2f+1 <PREVOTE, h, r, id(v)>"), never twice toward "any value". Counting it is safe
    (two quorums for different values still share an honest validator) and needed for
    liveness: an honest validator that saw the equivocator's other vote first must still
    see the quorum that others locked on. Only verified votes may be added."""

    def __init__(self, valset: ValidatorSet, height: int) -> None:
        self.valset, self.height = valset, height
        self._rounds: dict[int, _RoundVotes] = defaultdict(_RoundVotes)
        self._senders: dict[int, set[int]] = defaultdict(set)
        self._reported: set[tuple[int, int, VoteType]] = set()
        self._proposed: set[bytes] = set()

    def add(self, sv: SignedVote) -> tuple[bool, DuplicateVoteEvidence | None]:
        """(counted, evidence): counted is False for duplicates and equivocations."""
        v = sv.vote
        rv = self._rounds[v.round]
        self._senders[v.round].add(v.validator)
        known = rv.votes[v.type].get(v.validator)
        if known is not None:
            if known.vote.value == v.value:
                return False, None
            # Only for nil or a value some proposal of this height carries: the only
            # values a rule can act on, and a bound on what an equivocator can make us keep.
            if v.value is None or v.value in self._proposed:
                others = rv.others.setdefault((v.type, v.value), {})
                if v.validator not in others:
                    others[v.validator] = sv
                    rv.power[(v.type, v.value)] += self.valset.validators[v.validator].power
            key = (v.validator, v.round, v.type)
            if key in self._reported:
                return False, None
            self._reported.add(key)
            return False, DuplicateVoteEvidence.of(known, sv)
        rv.votes[v.type][v.validator] = sv
        weight = self.valset.validators[v.validator].power
        rv.power[(v.type, v.value)] += weight
        rv.power_any[v.type] += weight
        return True, None

    def saw_proposal(self, block_hash: bytes) -> None:
        """A proposal carrying ``block_hash`` is known: an equivocator's votes for it count."""
        self._proposed.add(block_hash)

    def saw_sender(self, round: int, validator: int) -> None:
        """Any message (a proposal too) from ``validator`` at ``round``, for L55."""
        self._senders[round].add(validator)

    def power(self, round: int, type: VoteType, value: bytes | None) -> int:
        rv = self._rounds.get(round)
        return rv.power.get((type, value), 0) if rv else 0

    def power_any(self, round: int, type: VoteType) -> int:
        rv = self._rounds.get(round)
        return rv.power_any.get(type, 0) if rv else 0

    def votes_for(self, round: int, type: VoteType, value: bytes | None) -> list[SignedVote]:
        rv = self._rounds.get(round)
        if rv is None:
            return []
        first = [sv for sv in rv.votes[type].values() if sv.vote.value == value]
        return first + list(rv.others.get((type, value), {}).values())

    def sender_power(self, round: int) -> int:
        return self.valset.power_of(self._senders.get(round, set()))

    def rounds_above(self, round: int) -> list[int]:
        return sorted(r for r in self._senders if r > round)

    def quorum_values(self, type: VoteType) -> list[tuple[int, bytes | None]]:
        """(round, value) pairs with a quorum of ``type`` votes, in round order."""
        out = []
        for r in sorted(self._rounds):
            for (t, value), power in self._rounds[r].power.items():
                if t is type and self.valset.is_quorum(power):
                    out.append((r, value))
        return out
