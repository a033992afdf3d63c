"""Byzantine validators. Each runs an honest ``Core`` underneath (so its messages are
plausible: right height, right round, real block hashes) and then mutates, withholds,
duplicates or adds to what that core broadcasts. It signs its mutations itself with its
raw key, bypassing the safety rules an honest validator would obey.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.signing

from consensus.events import DecisionReceived
from consensus.qc import QuorumCertificate
from consensus.sim.rng import Rng
from consensus.types import Block, Proposal, SignedProposal, SignedVote, ValidatorSet, Vote, VoteType

SILENT = "silent"  # sends nothing at all
EQUIVOCATE = "equivocate_proposer"  # as proposer: two blocks, one to each half
DOUBLE_VOTE = "double_vote"  # conflicting prevotes/precommits to different peers
FORGE = "forge"  # bad signatures, others' indices, non-members, forged certificates
STALE_FUTURE = "stale_and_future"  # replays old heights; signs far-future heights/rounds
INVALID_VALUE = "invalid_value"  # as proposer: a block the application rejects
BEHAVIOURS = (SILENT, EQUIVOCATE, DOUBLE_VOTE, FORGE, STALE_FUTURE, INVALID_VALUE)
ACTIVE = BEHAVIOURS[1:]  # the ones that can be combined (silent excludes the rest)

INVALID_MARK = b"INVALID"
FUTURE_HEIGHTS = 50
FAR_ROUNDS = 1000
_HISTORY = 64  # old messages kept for replays


def choose_behaviours(rng: Rng) -> tuple[str, ...]:
    """Silent one time in six, else a random non-empty combination of the others."""
    if rng.below(6) == 0:
        return (SILENT,)
    picked = tuple(b for b in ACTIVE if rng.below(2))
    return picked or (rng.choice(ACTIVE),)


Message = SignedProposal | SignedVote


@dataclass(frozen=True, slots=True)
class Send:
    dst: int
    message: Message


class Cabal:
    """What the Byzantine validators share, to coordinate: one split of the network per
    (height, round), and the two blocks an equivocating proposer sent to its halves, so
    that double voters back each half's block in that half."""

    def __init__(self, n: int, rng: Rng) -> None:
        self.n, self.rng = n, rng
        self._halves: dict[tuple[int, int], frozenset[int]] = {}
        self.twins: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # (h, r) -> (hash outside, hash inside)

    def half(self, height: int, round: int) -> frozenset[int]:
        key = (height, round)
        if key not in self._halves:
            self._halves[key] = frozenset(self.rng.sample(range(self.n), self.n // 2))
        return self._halves[key]


class Byzantine:
    def __init__(self, index: int, seed: bytes, behaviours: tuple[str, ...], valset: ValidatorSet,
                 swarm_id: bytes, rng: Rng, cabal: Cabal | None = None) -> None:
        unknown = set(behaviours) - set(BEHAVIOURS)
        if unknown:
            raise ValueError(f"unknown Byzantine behaviours: {sorted(unknown)}")
        self.index, self.behaviours, self.valset, self.swarm_id, self.rng = index, behaviours, valset, swarm_id, rng
        self._key = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)
        self.silent = SILENT in behaviours
        self.cabal = cabal if cabal is not None else Cabal(len(valset), rng)
        self._twins: dict[tuple[int, int, int], Message] = {}  # one conflicting twin per position
        self._proposals: dict[tuple[int, int], bytes] = {}  # (height, round) -> a block hash seen
        self._history: list[Message] = []

    def has(self, behaviour: str) -> bool:
        return behaviour in self.behaviours

    # --- what it sees -------------------------------------------------------------------

    def observe(self, msg: Message) -> None:
        if isinstance(msg, SignedProposal):
            p = msg.proposal
            self._proposals.setdefault((p.height, p.round), p.block.hash)
        if len(self._history) < _HISTORY:
            self._history.append(msg)
        else:
            self._history[self.rng.below(_HISTORY)] = msg

    def payload(self, payload: bytes) -> bytes:
        """The block its application builds: marked invalid with ``invalid_value``."""
        return INVALID_MARK + b" " + payload if self.has(INVALID_VALUE) else payload

    # --- what it sends ------------------------------------------------------------------

    def outgoing(self, msg: Message, peers: list[int], height: int) -> list[Send]:
        """The sends replacing one broadcast of its honest core (at ``height``)."""
        if self.silent:
            return []
        sends = [Send(p, msg) for p in peers]
        if isinstance(msg, SignedProposal) and self.has(EQUIVOCATE):
            sends = self._split(msg, self._twin_proposal(msg), peers, overlap=False)
        elif isinstance(msg, SignedVote) and self.has(DOUBLE_VOTE):
            sends = self._split(*self._double_vote(msg), peers, overlap=True)
        if self.has(FORGE):
            sends += [Send(self.rng.choice(peers), m) for m in self._forgeries(msg)]
        if self.has(STALE_FUTURE):
            sends += [Send(self.rng.choice(peers), m) for m in self._stale_and_future(msg, height)]
        return sends

    def _split(self, a: Message, b: Message, peers: list[int], overlap: bool) -> list[Send]:
        """``a`` outside the cabal's half for this round, ``b`` inside; with ``overlap``
        one peer gets both, so that the double vote is seen (and reported) by somebody."""
        pos = _position(a)
        half = self.cabal.half(pos[0], pos[1])
        sends = [Send(p, b if p in half else a) for p in peers]
        if overlap and peers:
            witness = self.rng.choice(peers)
            sends.append(Send(witness, a if witness in half else b))
        return sends

    def _twin_proposal(self, sp: SignedProposal) -> SignedProposal:
        p = sp.proposal
        twin = self._twins.get(_position(sp))
        if twin is None:
            block = Block(p.height, p.block.prev_hash, self.public_key, p.block.payload + b" twin")
            twin = self.sign_proposal(Proposal(p.height, p.round, block, p.valid_round, self.index))
            self._twins[_position(sp)] = twin
            self.cabal.twins.setdefault((p.height, p.round), (p.block.hash, block.hash))
        return twin

    def _double_vote(self, sv: SignedVote) -> tuple[SignedVote, SignedVote]:
        """Two conflicting votes: if an equivocating proposer split this round, one for
        each half's block; else the honest core's vote and a twin."""
        v = sv.vote
        twins = self.cabal.twins.get((v.height, v.round))
        if twins is not None:
            outside, inside = (self.sign_vote(Vote(v.type, v.height, v.round, h, self.index)) for h in twins)
            return outside, inside
        return sv, self._twin_vote(sv)

    def _twin_vote(self, sv: SignedVote) -> SignedVote:
        v = sv.vote
        twin = self._twins.get(_position(sv))
        if twin is None:
            if v.value is not None:
                other = None if self.rng.below(2) else self.rng.bytes(32)
            else:
                other = self._proposals.get((v.height, v.round)) or self.rng.bytes(32)
            twin = self.sign_vote(Vote(v.type, v.height, v.round, other, self.index))
            self._twins[_position(sv)] = twin
        return twin

    def _forgeries(self, msg: Message) -> list[Message]:
        n = len(self.valset)
        junk = self.rng.bytes(64)
        if isinstance(msg, SignedVote):
            v = msg.vote
            victim = self.rng.choice([i for i in range(n) if i != self.index] or [self.index])
            claims_other = Vote(v.type, v.height, v.round, v.value, victim)
            return [
                SignedVote(claims_other, self._sign(claims_other.signing_bytes(self.swarm_id))),  # wrong key
                SignedVote(v, junk),  # garbage signature
                self.sign_vote(Vote(v.type, v.height, v.round, v.value, n + self.rng.below(5))),  # not a member
            ]
        p = msg.proposal
        out: list[Message] = [SignedProposal(p, junk)]
        # A round where it is not the proposer, signed under its own index...
        for r in range(p.round + 1, p.round + 1 + n):
            if self.valset.proposer(p.height, r) != self.index:
                out.append(self.sign_proposal(Proposal(p.height, r, p.block, -1, self.index)))
                # ...and claiming to be that round's real proposer, signed with its own key.
                real = self.valset.proposer(p.height, r)
                block = Block(p.height, p.block.prev_hash, self.valset.validators[real].public_key, p.block.payload)
                claim = Proposal(p.height, r, block, -1, real)
                out.append(SignedProposal(claim, self._sign(claim.signing_bytes(self.swarm_id))))
                break
        return out

    def _stale_and_future(self, msg: Message, height: int) -> list[Message]:
        out: list[Message] = []
        stale = [m for m in self._history if _position(m)[0] < height]
        if stale:
            out.append(self.rng.choice(stale))  # a replay from an old height
        if isinstance(msg, SignedVote):
            v = msg.vote
            out.append(self.sign_vote(Vote(v.type, v.height + FUTURE_HEIGHTS, v.round, self.rng.bytes(32), self.index)))
            out.append(self.sign_vote(Vote(v.type, v.height, v.round + FAR_ROUNDS, v.value, self.index)))
        else:
            p = msg.proposal
            far = Proposal(p.height, p.round + FAR_ROUNDS, p.block, -1, self.index)
            out.append(self.sign_proposal(far))
        return out

    def answer(self, height: int, decided: DecisionReceived | None, prev_hash: bytes) -> DecisionReceived | None:
        """Its reply to a catch-up request: with ``forge``, a made-up decision whose
        certificate carries junk signatures from every validator."""
        if self.silent:
            return None
        if not self.has(FORGE):
            return decided
        block = Block(height, prev_hash, self.public_key, b"forged decision")
        n = len(self.valset)
        bitmap = bytearray((n + 7) // 8)
        for i in range(n):
            bitmap[i // 8] |= 1 << (i % 8)
        sigs = tuple(self.rng.bytes(64) for _ in range(n))
        return DecisionReceived(block, QuorumCertificate(VoteType.PRECOMMIT, height, 0, block.hash, bytes(bitmap), sigs))

    # --- signing without safety rules ---------------------------------------------------

    def _sign(self, data: bytes) -> bytes:
        return self._key.sign(data).signature

    def sign_vote(self, vote: Vote) -> SignedVote:
        return SignedVote(vote, self._sign(vote.signing_bytes(self.swarm_id)))

    def sign_proposal(self, proposal: Proposal) -> SignedProposal:
        return SignedProposal(proposal, self._sign(proposal.signing_bytes(self.swarm_id)))


def _position(msg: Message) -> tuple[int, int, int]:
    if isinstance(msg, SignedProposal):
        return (msg.proposal.height, msg.proposal.round, 0)
    v = msg.vote
    return (v.height, v.round, int(v.type))
