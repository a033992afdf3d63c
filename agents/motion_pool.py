"""Motions in flight: received, balloted, not yet decided.

The pool is the one place that knows, for each unresolved motion, who has committed to a
ballot and who has revealed one, and so when the motion can be resolved: once ballots
of validators holding more than 2/3 of the power are revealed (``Closing.QUORUM``), or
with whatever was revealed when its deadline passes (``Closing.DEADLINE``).

It is bounded, because anyone may submit motions: at most ``max_pending_motions`` in
all and ``max_pending_per_sender`` from one signer; duplicates and motions decided
before are dropped. Ballots may outrun their motion (a motion comes from its client by
gossip, ballots from validators directly): those are kept, up to a bound shared fairly
among the validators, and applied when the motion arrives. Pure: the caller passes the
time in (seconds, any monotonic clock).
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from agents.commitment import Commitment, Reveal, RevealMismatch, check_reveal
from agents.resolution import CastBallot, Closing, Resolution, resolve
from p2p.errors import LocalProtocolError
from p2p.messages import Motion
from p2p.swarmfile import SwarmConfig

MAX_ORPHAN_REVEALS = 4  # per motion: reveals that arrived before their commitment
# Ballots kept for motions not seen yet, in all (each validator may hold its share). Under
# load a validator got 1,948 ballots before their motions; dropped, each waited for its
# voter's re-send (ballot_rebroadcast_ms, 5 s), and the last block of a run waited with it.
MAX_EARLY_BALLOTS = 16_384


class Admission(enum.StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    DECIDED_BEFORE = "decided_before"
    POOL_FULL = "pool_full"
    SENDER_FULL = "sender_full"


class BallotVerdict(enum.StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    UNKNOWN_MOTION = "unknown_motion"  # not pending here (decided already, or not seen yet)
    NOT_VALIDATOR = "not_validator"
    CONFLICT = "conflict"  # a second, different commitment from the same voter
    MISMATCH = "mismatch"  # a reveal that does not open the voter's commitment
    WAITING = "waiting"  # a reveal kept until its commitment arrives
    EARLY = "early"  # kept until its motion arrives


@dataclass(slots=True)
class PendingEntry:
    motion_id: bytes
    envelope: bytes  # the signed MOTION envelope, as received
    motion: Motion
    sender: bytes
    first_seen: float
    commitments: dict[bytes, Commitment] = field(default_factory=dict)
    reveals: dict[bytes, Reveal] = field(default_factory=dict)  # opened commitments only
    orphans: dict[bytes, Reveal] = field(default_factory=dict)
    # Kept as ballots are added: the node asks after every pass, for every motion.
    committed_power: int = 0
    revealed_power: int = 0


@dataclass(frozen=True, slots=True)
class Progress:
    committed_power: int
    revealed_power: int


class MotionPool:
    def __init__(self, swarm: SwarmConfig, decided: set[bytes] | None = None) -> None:
        self.swarm = swarm
        p = swarm.params
        self.max_motions, self.max_per_sender = p.max_pending_motions, p.max_pending_per_sender
        self.deadline_s = p.motion_deadline_ms / 1000
        self._power = {v.public_key: v.power for v in swarm.validators}
        self._total = swarm.total_power
        self._pending: dict[bytes, PendingEntry] = {}  # in arrival order
        self._per_sender: Counter[bytes] = Counter()
        self._decided: set[bytes] = set(decided or ())
        self._early = EarlyBallots(MAX_EARLY_BALLOTS // max(1, len(self._power)))

    # --- motions --------------------------------------------------------------------

    def add_motion(self, motion_id: bytes, envelope: bytes, motion: Motion, sender: bytes, now: float) -> Admission:
        if motion_id in self._pending:
            return Admission.DUPLICATE
        if motion_id in self._decided:
            return Admission.DECIDED_BEFORE
        if len(self._pending) >= self.max_motions:
            return Admission.POOL_FULL
        if self._per_sender[sender] >= self.max_per_sender:
            return Admission.SENDER_FULL
        self._pending[motion_id] = PendingEntry(motion_id, envelope, motion, sender, now)
        self._per_sender[sender] += 1
        for item in self._early.take(motion_id):  # commitments first: as they arrived
            if isinstance(item, Commitment):
                self.add_commitment(item)
            else:
                self.add_reveal(item)
        return Admission.ADDED

    def get(self, motion_id: bytes) -> PendingEntry | None:
        return self._pending.get(motion_id)

    def pending(self) -> list[PendingEntry]:
        return list(self._pending.values())

    def __len__(self) -> int:
        return len(self._pending)

    def is_decided(self, motion_id: bytes) -> bool:
        return motion_id in self._decided

    def mark_decided(self, motion_ids: list[bytes]) -> None:
        for m in motion_ids:
            self._decided.add(m)
            self.discard(m)
            self._early.take(m)

    @property
    def early_ballots(self) -> int:
        return len(self._early)

    def discard(self, motion_id: bytes) -> None:
        """Forget a pending motion (decided, or refused by the store)."""
        entry = self._pending.pop(motion_id, None)
        if entry is not None:
            self._per_sender[entry.sender] -= 1
            if not self._per_sender[entry.sender]:
                del self._per_sender[entry.sender]

    def deadline_passed(self, motion_id: bytes, now: float) -> bool:
        """A validator's judgement of a proposal that closes a motion by its deadline.
        A motion we never saw cannot be disputed: its deadline counts as passed."""
        entry = self._pending.get(motion_id)
        return entry is None or now - entry.first_seen >= self.deadline_s

    # --- ballots --------------------------------------------------------------------

    def add_commitment(self, c: Commitment) -> BallotVerdict:
        """``c`` is signed by its voter (the gate checked the envelope; we check ``c``)."""
        if c.voter not in self._power:
            return BallotVerdict.NOT_VALIDATOR
        entry = self._pending.get(c.motion_id)
        if entry is None:
            return self._keep_early(c.motion_id, c.voter, c)
        known = entry.commitments.get(c.voter)
        if known == c:
            return BallotVerdict.DUPLICATE
        # Verify before judging a difference: a forged second commitment must not be
        # reported as the named voter's conflict.
        if c.swarm_id != self.swarm.swarm_id or not c.verify():
            return BallotVerdict.MISMATCH
        if known is not None:
            return BallotVerdict.CONFLICT
        entry.commitments[c.voter] = c
        entry.committed_power += self._power[c.voter]
        orphan = entry.orphans.pop(c.voter, None)
        if orphan is not None:
            self.add_reveal(orphan)
        return BallotVerdict.ADDED

    def add_reveal(self, r: Reveal) -> BallotVerdict:
        voter = r.ballot.voter
        if voter not in self._power:
            return BallotVerdict.NOT_VALIDATOR
        entry = self._pending.get(r.ballot.motion_id)
        if entry is None:
            return self._keep_early(r.ballot.motion_id, voter, r)
        if voter in entry.reveals:
            return BallotVerdict.DUPLICATE
        commitment = entry.commitments.get(voter)
        if commitment is None:
            if len(entry.orphans) < MAX_ORPHAN_REVEALS or voter in entry.orphans:
                entry.orphans[voter] = r
            return BallotVerdict.WAITING
        try:
            check_reveal(commitment, r)
        except RevealMismatch:
            return BallotVerdict.MISMATCH
        if (r.ballot.motion_text, r.ballot.options) != (entry.motion.text, entry.motion.options):
            return BallotVerdict.MISMATCH
        entry.reveals[voter] = r
        entry.revealed_power += self._power[voter]
        return BallotVerdict.ADDED

    def _keep_early(self, motion_id: bytes, voter: bytes, item: Commitment | Reveal) -> BallotVerdict:
        if motion_id in self._decided:
            return BallotVerdict.UNKNOWN_MOTION
        return BallotVerdict.EARLY if self._early.keep(motion_id, voter, item) else BallotVerdict.UNKNOWN_MOTION

    def progress(self, motion_id: bytes) -> Progress:
        entry = self._pending.get(motion_id)
        if entry is None:
            raise LocalProtocolError(f"motion {motion_id.hex()[:12]} is not pending")
        return Progress(entry.committed_power, entry.revealed_power)

    def is_quorum(self, power: int) -> bool:
        return 3 * power > 2 * self._total

    # --- resolution -----------------------------------------------------------------

    def resolvable(self, now: float, limit: int) -> list[Resolution]:
        """Up to ``limit`` resolutions, oldest motion first: what a proposer packs."""
        out: list[Resolution] = []
        for entry in self._pending.values():
            if len(out) >= limit:
                break
            if self.is_quorum(entry.revealed_power):
                closing = Closing.QUORUM
            elif now - entry.first_seen >= self.deadline_s:
                closing = Closing.DEADLINE
            else:
                continue
            cast = [CastBallot(entry.commitments[v], r) for v, r in entry.reveals.items()]
            out.append(resolve(entry.envelope, cast, self.swarm, closing))
        return out


class EarlyBallots:
    """Ballots for motions not pending here yet, by motion, oldest first; each voter may
    hold ``per_voter`` of them (a faulty validator fills only its own share). Nothing is
    verified here: the pool checks each one as it applies it."""

    def __init__(self, per_voter: int) -> None:
        self.per_voter = per_voter
        self._by_motion: OrderedDict[bytes, list[tuple[bytes, Commitment | Reveal]]] = OrderedDict()
        self._per_voter: Counter[bytes] = Counter()

    def __len__(self) -> int:
        return self._per_voter.total()

    def keep(self, motion_id: bytes, voter: bytes, item: Commitment | Reveal) -> bool:
        kept = self._by_motion.get(motion_id, [])
        if any(v == voter and type(i) is type(item) for v, i in kept):
            return True  # one of each per voter: a re-send of the same, or a conflict judged on arrival
        if self._per_voter[voter] >= self.per_voter:
            return False
        self._by_motion.setdefault(motion_id, kept).append((voter, item))
        self._per_voter[voter] += 1
        return True

    def take(self, motion_id: bytes) -> list[Commitment | Reveal]:
        kept = self._by_motion.pop(motion_id, [])
        for voter, _ in kept:
            self._per_voter[voter] -= 1
            if not self._per_voter[voter]:
                del self._per_voter[voter]
        return sorted((i for _, i in kept), key=lambda i: not isinstance(i, Commitment))
