"""The Tendermint state machine (arXiv:1807.04938, Algorithm 1) for one validator.

Pure: ``handle(input)`` mutates the state and returns effects; nothing here reads a
clock, draws a random number or touches a socket. Line numbers (``L22``) refer to
Algorithm 1 of the paper. After every input the upon-rules are evaluated until none
fires, so a rule enabled by another (a decision after a late proposal, say) runs at once.

Departures from the paper, each for liveness over a lossy network, none for safety:
- every validator, proposer included, schedules timeoutPropose (as CometBFT does), so a
  proposer whose application is slow to build a block does not stall the round;
- a REBROADCAST timeout resends our messages of the round while it makes no progress
  (the paper assumes reliable gossip; ours loses messages);
- a validly signed message from a higher height asks the driver to fetch that height's
  decision (``RequestDecision``), which is applied once its certificate verifies.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus.errors import ConflictingVoteError, LocalProtocolError, RemoteProtocolError
from consensus.events import (
    Broadcast,
    Decide,
    DecisionReceived,
    Effect,
    Input,
    ProposalReceived,
    PersistVote,
    ReportEvidence,
    ReportRoundChange,
    RequestDecision,
    RequestValue,
    ScheduleTimeout,
    Started,
    TimeoutFired,
    TimeoutKind,
    ValidateValue,
    ValueReady,
    ValueValidated,
    VotePersisted,
    VoteReceived,
)
from consensus.evidence import DuplicateProposalEvidence
from consensus.qc import QuorumCertificate
from consensus.safety import SafetyRules
from consensus.types import NIL, Block, Proposal, SignedProposal, SignedVote, Step, ValidatorSet, Vote, VoteType
from consensus.votes import VoteKeeper

MAX_ROUNDS_AHEAD = 100  # messages for rounds further ahead are ignored (bounded memory)
MAX_BUFFERED_NEXT_HEIGHT = 1000  # messages for height+1 kept until we get there
MAX_PROPOSALS_PER_ROUND = 4  # an equivocating proposer cannot make us keep more


@dataclass(frozen=True, slots=True)
class Timeouts:
    """timeout(r) = base + r * delta, in milliseconds (timeouts grow with the round)."""

    propose_ms: int = 3000
    prevote_ms: int = 1000
    precommit_ms: int = 1000
    delta_ms: int = 500

    def duration(self, kind: TimeoutKind, round: int) -> int:
        base = {
            TimeoutKind.PROPOSE: self.propose_ms,
            TimeoutKind.PREVOTE: self.prevote_ms,
            TimeoutKind.PRECOMMIT: self.precommit_ms,
            TimeoutKind.REBROADCAST: self.propose_ms + self.prevote_ms + self.precommit_ms,
        }[kind]
        return base + round * self.delta_ms


@dataclass(frozen=True, slots=True)
class CoreState:
    """A read-only view of the variables of Algorithm 1 (L2-L9), for tests and logs."""

    height: int
    round: int
    step: Step
    locked_round: int
    locked_value: bytes | None  # hash
    valid_round: int
    valid_value: bytes | None  # hash


class Core:
    def __init__(
        self,
        *,
        swarm_id: bytes,
        valset: ValidatorSet,
        height: int,
        prev_hash: bytes,
        timeouts: Timeouts = Timeouts(),
        safety: SafetyRules | None = None,
        start_heights_at_once: bool = True,
    ) -> None:
        """``safety`` is None for an observer, which follows and decides but never votes.

        With ``start_heights_at_once=False`` a new height waits for ``Started`` (the
        driver feeds it once there is something to agree on) or for a peer's message at
        that height (someone else has work): an idle swarm then runs no rounds at all,
        as CometBFT's ``create_empty_blocks = false``."""
        self.swarm_id, self.valset, self.timeouts, self.safety = swarm_id, valset, timeouts, safety
        self.start_heights_at_once = start_heights_at_once
        self.me = safety.validator if safety is not None else None
        if self.me is not None and valset.validators[self.me].public_key != safety.public_key:
            raise LocalProtocolError("the safety rules' key is not this validator's")
        self.ignored: dict[str, int] = {}
        self._out: list[Effect] = []
        self._buffer: list[Input] = []
        self._enter_height(height, prev_hash)
        last = safety.durable if safety is not None else None
        if last is not None and last.height == height:
            # A restart: resume at the round we had reached, with the lock we held.
            self.round = last.round
            self.locked_round, self.locked_value = last.locked_round, last.locked_value

    # --- the state of Algorithm 1 -------------------------------------------------------

    def _enter_height(self, height: int, prev_hash: bytes) -> None:
        self.height, self.prev_hash = height, prev_hash  # L2 / L52
        self.round, self.step = 0, Step.PROPOSE  # L3-L4
        self.started = False  # StartRound has run at this height
        self.locked_value: bytes | None = None  # L6 / L53 (the hash is all the rules need)
        self.locked_round = -1  # L7
        self.valid_value: Block | None = None  # L8
        self.valid_round = -1  # L9
        self.votes = VoteKeeper(self.valset, height)
        # Every (bounded) proposal per round, in arrival order: L22/L28 act on the first,
        # but L36 and L49 hold for *any* proposal of the proposer with a quorum behind it,
        # which matters when a Byzantine proposer sent different blocks to different peers.
        self.proposals: dict[int, dict[bytes, SignedProposal]] = {}
        self._validity: dict[bytes, bool] = {}
        self._asked_validity: set[bytes] = set()
        self._fired: set[tuple[int, int]] = set()  # (line, round) of "for the first time" rules
        self._signing: list[Proposal | Vote] = []  # authorised, waiting to be durable
        self._sent: dict[tuple[int, int], SignedProposal | SignedVote] = {}  # (round, step) -> ours
        self._asked_decision: set[int] = set()

    def state(self) -> CoreState:
        return CoreState(
            self.height, self.round, self.step,
            self.locked_round, self.locked_value,
            self.valid_round, self.valid_value.hash if self.valid_value else None,
        )

    # --- entry point ----------------------------------------------------------------------

    def handle(self, inp: Input) -> list[Effect]:
        """Apply one input; the effects to carry out, in order. Raises
        ``RemoteProtocolError`` (state unchanged) for a peer's invalid message."""
        if isinstance(inp, Started):
            if not self.started:
                self._start_round(self.round)  # L10
        elif isinstance(inp, ProposalReceived):
            self._on_proposal(inp.proposal)
        elif isinstance(inp, VoteReceived):
            self._on_vote(inp.vote)
        elif isinstance(inp, TimeoutFired):
            self._on_timeout(inp)
        elif isinstance(inp, ValueReady):
            self._on_value(inp)
        elif isinstance(inp, ValueValidated):
            if inp.height == self.height:
                self._validity[inp.block_hash] = inp.valid
        elif isinstance(inp, VotePersisted):
            self._on_persisted(inp)
        elif isinstance(inp, DecisionReceived):
            self._on_decision(inp)
        else:
            raise LocalProtocolError(f"not a consensus input: {inp!r}")
        self._evaluate()
        out, self._out = self._out, []
        return out

    # --- receiving ------------------------------------------------------------------------

    def _admit(self, height: int, round: int, inp: Input) -> bool:
        """Whether a message of (height, round) is for now; buffers the next height's."""
        if height < self.height:
            self._ignore("stale_height")
            return False
        if height > self.height:
            if height == self.height + 1 and len(self._buffer) < MAX_BUFFERED_NEXT_HEIGHT:
                self._buffer.append(inp)
            else:
                self._ignore("future_height")
            return False
        if round > self.round + MAX_ROUNDS_AHEAD:
            self._ignore("far_future_round")
            return False
        if not self.started:
            self._start_round(self.round)  # a peer is at our height: join it
        return True

    def _ask_decision(self, height: int) -> None:
        # Someone validly signed a message of a later height: we are behind.
        if height not in self._asked_decision:
            self._asked_decision.add(height)
            self._out.append(RequestDecision(height))

    def _on_proposal(self, sp: SignedProposal) -> None:
        p = sp.proposal
        if p.proposer >= len(self.valset) or p.proposer != self.valset.proposer(p.height, p.round):
            raise RemoteProtocolError("wrong_proposer", f"validator {p.proposer} is not the proposer of {p.height}/{p.round}")
        if not sp.verify(self.valset, self.swarm_id):
            raise RemoteProtocolError("bad_signature", f"proposal {p.height}/{p.round}")
        if p.height > self.height:
            self._ask_decision(self.height)
        if not self._admit(p.height, p.round, ProposalReceived(sp)):
            return
        known = self.proposals.setdefault(p.round, {})
        if p.block.hash in known:
            return
        if known:
            self._ignore("conflicting_proposal")  # an equivocating proposer
            if len(known) == 1:  # once per round: the first pair proves it
                first = next(iter(known.values()))
                self._out.append(ReportEvidence(DuplicateProposalEvidence.of(first, sp)))
            if len(known) >= MAX_PROPOSALS_PER_ROUND:
                return
        known[p.block.hash] = sp
        self.votes.saw_sender(p.round, p.proposer)
        self.votes.saw_proposal(p.block.hash)
        if p.block.prev_hash != self.prev_hash:
            self._validity[p.block.hash] = False  # not on our chain: invalid without asking

    def _on_vote(self, sv: SignedVote) -> None:
        v = sv.vote
        if v.validator >= len(self.valset):
            raise RemoteProtocolError("not_member", f"validator index {v.validator}")
        if not sv.verify(self.valset, self.swarm_id):
            raise RemoteProtocolError("bad_signature", f"{v.type.name.lower()} {v.height}/{v.round}")
        if v.height > self.height:
            self._ask_decision(self.height)
        if not self._admit(v.height, v.round, VoteReceived(sv)):
            return
        _, evidence = self.votes.add(sv)
        if evidence is not None:
            self._out.append(ReportEvidence(evidence))

    def _on_decision(self, inp: DecisionReceived) -> None:
        block, qc = inp.block, inp.certificate
        if block.height != self.height:
            self._ignore("decision_not_for_this_height")
            return
        if block.prev_hash != self.prev_hash:
            raise RemoteProtocolError("bad_decision", "block is not on our chain")
        why = qc.verify(self.valset, self.swarm_id)
        if why is not None or qc.height != self.height:
            raise RemoteProtocolError("bad_certificate", why or "certificate for another height")
        self._decide(qc.round, block, qc)

    # --- timeouts (L57-L67) ---------------------------------------------------------------

    def _on_timeout(self, t: TimeoutFired) -> None:
        if t.height != self.height or t.round != self.round:
            return
        if t.kind is TimeoutKind.PROPOSE and self.step is Step.PROPOSE:  # L57-L60
            self._vote(VoteType.PREVOTE, NIL)  # L59
            self.step = Step.PREVOTE  # L60
        elif t.kind is TimeoutKind.PREVOTE and self.step is Step.PREVOTE:  # L61-L64
            self._vote(VoteType.PRECOMMIT, NIL)  # L63
            self.step = Step.PRECOMMIT  # L64
        elif t.kind is TimeoutKind.PRECOMMIT:  # L65-L67
            self._start_round(self.round + 1)  # L67
        elif t.kind is TimeoutKind.REBROADCAST:
            # All of this height's rounds: a later round may need an earlier one's
            # prevotes (L28) or precommits and proposal (L49).
            for msg in self._sent.values():
                self._out.append(Broadcast(msg))
            if self.valid_value is not None:
                # Relay the prevotes behind our valid value (the paper's gossip: correct
                # processes forward what they receive), so that every honest validator can
                # check a re-proposal's valid_round (L28), even when a Byzantine validator
                # sent its prevote to some of us only.
                for sv in self.votes.votes_for(self.valid_round, VoteType.PREVOTE, self.valid_value.hash):
                    if sv.vote.validator != self.me:
                        self._out.append(Broadcast(sv))
            # A catch-up request may have been lost, or asked before anyone had decided
            # (a Byzantine far-future message): allow one more per rebroadcast period.
            self._asked_decision.clear()
            self._schedule(TimeoutKind.REBROADCAST)

    # --- the round ------------------------------------------------------------------------

    def _start_round(self, round: int) -> None:  # L11
        self.started = True
        self.round = round  # L12
        self.step = Step.PROPOSE  # L13
        proposer = self.valset.proposer(self.height, round)
        self._out.append(ReportRoundChange(self.height, round, proposer))
        if proposer == self.me:  # L14
            if self.valid_value is not None:  # L15
                self._propose(self.valid_value)  # L16, L19
            else:
                self._out.append(RequestValue(self.height, round, self.prev_hash))  # L18
        self._schedule(TimeoutKind.PROPOSE)  # L21 (for the proposer too: see the docstring)
        self._schedule(TimeoutKind.REBROADCAST)

    def _on_value(self, inp: ValueReady) -> None:  # L18 getValue() returns
        if (inp.height, inp.round) != (self.height, self.round) or self.step is not Step.PROPOSE:
            return  # too late: the round has moved on
        if self.valset.proposer(self.height, self.round) != self.me:
            raise LocalProtocolError("a value was supplied to a validator that is not the proposer")
        b = inp.block
        if b.height != self.height or b.prev_hash != self.prev_hash or b.proposer != self.safety.public_key:
            raise LocalProtocolError("the supplied block does not extend our chain from us at this height")
        self._validity[b.hash] = True
        self._propose(b)  # L19

    def _propose(self, block: Block) -> None:
        proposal = Proposal(self.height, self.round, block, self.valid_round, self.me)  # L19
        self._authorize(proposal)

    def _vote(self, type: VoteType, value: bytes | None) -> None:
        if self.me is not None:
            self._authorize(Vote(type, self.height, self.round, value, self.me))

    def _authorize(self, msg: Proposal | Vote) -> None:
        try:
            state = self.safety.authorize(msg, (self.locked_round, self.locked_value))
        except ConflictingVoteError:
            # Signed differently before a crash: stay silent rather than equivocate.
            self._ignore("would_conflict")
            return
        self._signing.append(msg)
        self._out.append(PersistVote(state))

    def _on_persisted(self, inp: VotePersisted) -> None:
        if self.safety is None:
            raise LocalProtocolError("an observer persists no votes")
        self.safety.persisted(inp.state)
        ready = [m for m in self._signing if _position(m) <= inp.state.position]
        self._signing = [m for m in self._signing if _position(m) > inp.state.position]
        for msg in ready:
            if isinstance(msg, Proposal):
                signed = self.safety.sign_proposal(msg)
                if msg.height == self.height:
                    self.proposals.setdefault(msg.round, {}).setdefault(msg.block.hash, signed)
                    self.votes.saw_proposal(msg.block.hash)
            else:
                signed = self.safety.sign_vote(msg)
                if msg.height == self.height:
                    self.votes.add(signed)
            if msg.height == self.height:
                self._sent[(msg.round, int(_position(msg)[2]))] = signed
            self._out.append(Broadcast(signed))

    def _schedule(self, kind: TimeoutKind) -> None:
        self._out.append(ScheduleTimeout(kind, self.height, self.round, self.timeouts.duration(kind, self.round)))

    # --- the upon rules -------------------------------------------------------------------

    def _valid(self, sp: SignedProposal) -> bool | None:
        """valid(v): known, or asked of the application once (answer: ``ValueValidated``)."""
        block = sp.proposal.block
        known = self._validity.get(block.hash)
        if known is None and block.hash not in self._asked_validity:
            self._asked_validity.add(block.hash)
            self._out.append(ValidateValue(self.height, sp.proposal.round, block))
        return known

    def _first_time(self, line: int, round: int) -> bool:
        if (line, round) in self._fired:
            return False
        self._fired.add((line, round))
        return True

    def _evaluate(self) -> None:
        while self._apply_one_rule():
            pass

    def _apply_one_rule(self) -> bool:
        """Fire the first upon-rule whose condition holds; whether one fired."""
        q = self.valset.is_quorum
        # L49: a proposal with 2f+1 precommits in any round r -> decide.
        for r, round_proposals in self.proposals.items():
            for sp in round_proposals.values():
                v = sp.proposal.block
                if q(self.votes.power(r, VoteType.PRECOMMIT, v.hash)) and self._valid(sp):  # L50
                    self._decide(r, v, None)
                    return True
        # L55: f+1 messages from a higher round -> skip to it.
        for r in reversed(self.votes.rounds_above(self.round)):
            if r <= self.round + MAX_ROUNDS_AHEAD and self.valset.is_one_third(self.votes.sender_power(r)):
                self._start_round(r)  # L56
                return True
        proposals = self.proposals.get(self.round, {})
        sp = next(iter(proposals.values()), None)  # the first to arrive
        if self.step is Step.PROPOSE and sp is not None:
            v, vr = sp.proposal.block, sp.proposal.valid_round
            if vr == -1:  # L22
                valid = self._valid(sp)
                if valid is not None:
                    ok = valid and (self.locked_round == -1 or self._locked_on(v))  # L23
                    self._vote(VoteType.PREVOTE, v.hash if ok else NIL)  # L24 / L26
                    self.step = Step.PREVOTE  # L27
                    return True
            elif 0 <= vr < self.round and q(self.votes.power(vr, VoteType.PREVOTE, v.hash)):  # L28
                valid = self._valid(sp)
                if valid is not None:
                    ok = valid and (self.locked_round <= vr or self._locked_on(v))  # L29
                    self._vote(VoteType.PREVOTE, v.hash if ok else NIL)  # L30 / L32
                    self.step = Step.PREVOTE  # L33
                    return True
        if self.step is Step.PREVOTE and q(self.votes.power_any(self.round, VoteType.PREVOTE)):  # L34
            if self._first_time(34, self.round):
                self._schedule(TimeoutKind.PREVOTE)  # L35
                return True
        if self.step >= Step.PREVOTE and (36, self.round) not in self._fired:
            for candidate in proposals.values():
                v = candidate.proposal.block
                if q(self.votes.power(self.round, VoteType.PREVOTE, v.hash)) and self._valid(candidate):  # L36
                    self._fired.add((36, self.round))
                    if self.step is Step.PREVOTE:  # L37
                        self.locked_value, self.locked_round = v.hash, self.round  # L38-L39
                        self._vote(VoteType.PRECOMMIT, v.hash)  # L40
                        self.step = Step.PRECOMMIT  # L41
                    self.valid_value, self.valid_round = v, self.round  # L42-L43
                    return True
        if self.step is Step.PREVOTE and q(self.votes.power(self.round, VoteType.PREVOTE, NIL)):  # L44
            self._vote(VoteType.PRECOMMIT, NIL)  # L45
            self.step = Step.PRECOMMIT  # L46
            return True
        if q(self.votes.power_any(self.round, VoteType.PRECOMMIT)) and self._first_time(47, self.round):  # L47
            self._schedule(TimeoutKind.PRECOMMIT)  # L48
            return True
        return False

    def _locked_on(self, v: Block) -> bool:
        return self.locked_value == v.hash

    def _decide(self, round: int, block: Block, certificate: QuorumCertificate | None) -> None:
        if certificate is None:
            votes = self.votes.votes_for(round, VoteType.PRECOMMIT, block.hash)
            certificate = QuorumCertificate.from_votes(votes, len(self.valset))
        self._out.append(Decide(self.height, round, block, certificate))  # L51
        self._enter_height(self.height + 1, block.hash)  # L52-L53
        if self.start_heights_at_once:
            self._start_round(0)  # L54
        buffered, self._buffer = self._buffer, []
        for inp in buffered:
            try:
                if isinstance(inp, ProposalReceived):
                    self._on_proposal(inp.proposal)
                else:
                    self._on_vote(inp.vote)
            except RemoteProtocolError:
                self._ignore("bad_buffered")

    def _ignore(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1


def _position(msg: Proposal | Vote) -> tuple[int, int, int]:
    step = Step.PROPOSE if isinstance(msg, Proposal) else msg.step
    return (msg.height, msg.round, int(step))
