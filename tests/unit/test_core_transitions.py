"""Table-driven transition tests of consensus/core.py against Algorithm 1 of
arXiv:1807.04938 ("The latest gossip on BFT consensus"), line by line (L10-L67).

Every row brings one core (validator 0 of 4 equal-power validators, unless the row says
otherwise, with real SafetyRules and real ed25519 signatures from fixed seeds) into a
state by feeding inputs, feeds the input under test, and checks the exact effects (in
order, summarised by type and key fields) and the new ``CoreState``.

The ``Harness`` acknowledges ``PersistVote`` (feeds ``VotePersisted``) and
``ValidateValue`` (feeds ``ValueValidated``, valid unless the row lists the block as
invalid) so that rows stay short; the effects of those acknowledgements are part of the
expected effects, in the order the driver would see them.

Height 1 with 4 equal validators: proposer(1, r) = (1 + r) mod 4, so rounds 0, 1, 2, 3, 4
are proposed by validators 1, 2, 3, 0, 1. A block's ``proposer`` field is its creator's
key: a fresh proposal (vr = -1) must carry a block its signer built, while a re-proposal
(vr >= 0, L16) carries the block as first proposed, by whichever validator built it.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

import nacl.signing
import pytest

from consensus.core import CoreState, Core, Timeouts
from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.events import (
    Broadcast,
    Decide,
    DecisionReceived,
    PersistVote,
    ProposalReceived,
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
from consensus.evidence import DuplicateProposalEvidence, DuplicateVoteEvidence
from consensus.qc import QuorumCertificate
from consensus.safety import SafetyRules
from consensus.types import (
    NIL,
    Block,
    Proposal,
    SignedProposal,
    SignedVote,
    Step,
    Validator,
    ValidatorSet,
    Vote,
    VoteType,
)

SWARM = hashlib.sha256(b"conclave test swarm").digest()
SEEDS = [hashlib.sha256(b"conclave test validator %d" % i).digest() for i in range(8)]
KEYS = [nacl.signing.SigningKey(s) for s in SEEDS]
PKS = [bytes(k.verify_key) for k in KEYS]
GENESIS = hashlib.sha256(b"genesis").digest()
EQUAL = (1, 1, 1, 1)
T = Timeouts()  # propose 3000, prevote 1000, precommit 1000, delta 500 (ms)

PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT
PROPOSE_T, PREVOTE_T, PRECOMMIT_T, REBROADCAST_T = (
    TimeoutKind.PROPOSE, TimeoutKind.PREVOTE, TimeoutKind.PRECOMMIT, TimeoutKind.REBROADCAST)


def valset(powers: tuple[int, ...] = EQUAL) -> ValidatorSet:
    return ValidatorSet(tuple(Validator(PKS[i], p) for i, p in enumerate(powers)))


def blk(payload: str, creator: int, height: int = 1, prev: bytes = GENESIS) -> Block:
    return Block(height, prev, PKS[creator], payload.encode())


# Blocks of height 1 (named by their payload in the effect summaries).
V = blk("v", 1)  # created by validator 1, proposer of (1, 0) and (1, 4)
V_ALT = blk("v'", 1)  # a second block by validator 1: an equivocating proposer's
W = blk("w", 2)  # created by validator 2, proposer of (1, 1)
X = blk("x", 3)  # created by validator 3, proposer of (1, 2)
OWN = blk("own", 0)  # validator 0's, proposer of (1, 3)
OTHER_CHAIN = blk("fork", 1, prev=hashlib.sha256(b"another chain").digest())
# Other heights.
B2 = blk("b2", 2, height=2, prev=V.hash)  # proposer of (2, 0) is validator 2
V3 = blk("v3", 3, height=3)  # proposer of (3, 0) is validator 3
OWN4 = blk("own4", 0, height=4)  # proposer of (4, 0) is validator 0

NAMES = {None: "nil", GENESIS: "genesis"}
NAMES.update({b.hash: b.payload.decode() for b in (V, V_ALT, W, X, OWN, OTHER_CHAIN, B2, V3, OWN4)})


def name(value: bytes | None) -> str:
    return NAMES.get(value) or value.hex()[:8]


# --- signed messages from the other validators ----------------------------------------


def signed_proposal(round: int, block: Block, vr: int = -1, by: int | None = None,
                    key: int | None = None) -> SignedProposal:
    """A proposal of ``block`` signed by ``by`` (default: the block's creator)."""
    by = PKS.index(block.proposer) if by is None else by
    p = Proposal(block.height, round, block, vr, by)
    return SignedProposal(p, KEYS[by if key is None else key].sign(p.signing_bytes(SWARM)).signature)


def prop(round: int, block: Block, vr: int = -1, by: int | None = None) -> ProposalReceived:
    return ProposalReceived(signed_proposal(round, block, vr, by))


def signed_vote(type: VoteType, round: int, value: Block | None, validator: int, height: int = 1,
                key: int | None = None, swarm: bytes = SWARM) -> SignedVote:
    v = Vote(type, height, round, value.hash if value is not None else NIL, validator)
    return SignedVote(v, KEYS[validator if key is None else key].sign(v.signing_bytes(swarm)).signature)


def pv(round: int, value: Block | None, *validators: int, height: int = 1) -> list[VoteReceived]:
    return [VoteReceived(signed_vote(PREVOTE, round, value, i, height)) for i in validators]


def pc(round: int, value: Block | None, *validators: int, height: int = 1) -> list[VoteReceived]:
    return [VoteReceived(signed_vote(PRECOMMIT, round, value, i, height)) for i in validators]


def tp(round: int, height: int = 1) -> TimeoutFired:
    return TimeoutFired(PROPOSE_T, height, round)


def tv(round: int, height: int = 1) -> TimeoutFired:
    return TimeoutFired(PREVOTE_T, height, round)


def tc(round: int, height: int = 1) -> TimeoutFired:
    return TimeoutFired(PRECOMMIT_T, height, round)


START = Started()


def flatten(items) -> list:
    out = []
    for x in items:
        out.extend(flatten(x) if isinstance(x, (list, tuple)) else [x])
    return out


# --- the harness ----------------------------------------------------------------------


class Harness:
    """One core; acknowledges PersistVote and ValidateValue as a prompt driver would."""

    def __init__(self, *, height: int = 1, powers: tuple[int, ...] = EQUAL, me: int | None = 0,
                 invalid: frozenset[bytes] | set[bytes] = frozenset(), prev_hash: bytes = GENESIS,
                 auto_persist: bool = True, persisted_state=None, start_heights_at_once: bool = True) -> None:
        self.valset = valset(powers)
        self.safety = SafetyRules(SEEDS[me], SWARM, me, persisted_state) if me is not None else None
        self.core = Core(swarm_id=SWARM, valset=self.valset, height=height, prev_hash=prev_hash,
                         timeouts=T, safety=self.safety, start_heights_at_once=start_heights_at_once)
        self.invalid = set(invalid)
        self.auto_persist = auto_persist
        self.log: list = []  # every effect ever emitted
        self.persisted: list = []  # every SafetyState the core asked to persist

    def feed(self, inp) -> list:
        """Feed ``inp`` and the acknowledgements its effects call for; all effects, in order."""
        out, queue = [], deque([inp])
        while queue:
            for e in self.core.handle(queue.popleft()):
                out.append(e)
                if isinstance(e, PersistVote):
                    self.persisted.append(e.state)
                    if self.auto_persist:
                        queue.append(VotePersisted(e.state))
                elif isinstance(e, ValidateValue):
                    queue.append(ValueValidated(e.height, e.block.hash, e.block.hash not in self.invalid))
        self.log.extend(out)
        return out

    def feed_all(self, inputs) -> list:
        out = []
        for inp in flatten(inputs):
            out.extend(self.feed(inp))
        return out

    def state(self) -> CoreState:
        return self.core.state()


def summary(e) -> tuple:
    if isinstance(e, PersistVote):
        s = e.state
        return ("PersistVote", s.step.name, s.round, name(s.value))
    if isinstance(e, Broadcast):
        m = e.message
        if isinstance(m, SignedVote):
            return ("Broadcast", m.vote.type.name, m.vote.round, name(m.vote.value))
        p = m.proposal
        return ("Broadcast", "PROPOSAL", p.round, name(p.block.hash), p.valid_round)
    if isinstance(e, ScheduleTimeout):
        return ("ScheduleTimeout", e.kind.name, e.height, e.round, e.duration_ms)
    if isinstance(e, RequestValue):
        return ("RequestValue", e.height, e.round, name(e.prev_hash))
    if isinstance(e, ValidateValue):
        return ("ValidateValue", e.height, e.round, name(e.block.hash))
    if isinstance(e, Decide):
        return ("Decide", e.height, e.round, name(e.block.hash))
    if isinstance(e, ReportEvidence):
        return ("ReportEvidence", e.evidence.validator)
    if isinstance(e, ReportRoundChange):
        return ("ReportRoundChange", e.height, e.round, e.proposer)
    if isinstance(e, RequestDecision):
        return ("RequestDecision", e.height)
    raise AssertionError(f"unknown effect {e!r}")


def summaries(effects) -> list[tuple]:
    return [summary(e) for e in effects]


# --- expected values ------------------------------------------------------------------


def S(round: int, step: Step, lock: tuple[int, Block] | None = None, valid: tuple[int, Block] | None = None,
      height: int = 1) -> CoreState:
    return CoreState(height, round, step,
                     lock[0] if lock else -1, lock[1].hash if lock else None,
                     valid[0] if valid else -1, valid[1].hash if valid else None)


P, PV, PC = Step.PROPOSE, Step.PREVOTE, Step.PRECOMMIT


def sched(kind: TimeoutKind, round: int, height: int = 1) -> tuple:
    return ("ScheduleTimeout", kind.name, height, round, T.duration(kind, round))


def start(round: int, height: int = 1, powers: tuple[int, ...] = EQUAL, request_prev: str | None = None) -> list:
    """The effects of StartRound(round) (L11-L21) for validator 0, no validValue."""
    proposer = valset(powers).proposer(height, round)
    out = [("ReportRoundChange", height, round, proposer)]
    if proposer == 0:
        out.append(("RequestValue", height, round, request_prev or "genesis"))  # L18
    return out + [sched(PROPOSE_T, round, height), sched(REBROADCAST_T, round, height)]


def persist_and_send(type: str, round: int, value: str) -> list:
    return [("PersistVote", type, round, value), ("Broadcast", type, round, value)]


# --- the setups shared by several rows -------------------------------------------------

# Round 0, prevote step, locked on v (and validValue v) from round 0, precommit v sent.
LOCKED_V_R0 = [START, prop(0, V), pv(0, V, 2, 3)]
# Locked on w in round 1 (round 0 passed by timeoutPrecommit without a proposal).
LOCKED_W_R1 = [START, tc(0), prop(1, W), pv(1, W, 2, 3)]
# f+1 messages of round 4 (precommits nil, so that no prevote counting is disturbed).
JUMP_TO_4 = pc(4, NIL, 2, 3)
JUMP_TO_8 = pc(8, NIL, 2, 3)


@dataclass(frozen=True)
class Row:
    name: str
    setup: list
    input: object
    effects: list
    state: CoreState
    invalid: frozenset = frozenset()
    height: int = 1
    powers: tuple = EQUAL
    prev_hash: bytes = GENESIS
    marks: tuple = field(default=())


ROWS = [
    # ---- L10-L21: start and StartRound ------------------------------------------------
    Row("L10-L13,L20-L21 start, not the proposer: schedule timeoutPropose",
        [], START, start(0), S(0, P)),
    Row("L14,L17-L18 start as the proposer without validValue: getValue()",
        [], START, start(0, height=4), S(0, P, height=4), height=4),
    Row("L18-L19 getValue() returns: proposal with vr=-1, signed once persisted (then L22 for it)",
        [START], ValueReady(4, 0, OWN4),
        [("PersistVote", "PROPOSE", 0, "own4"), ("Broadcast", "PROPOSAL", 0, "own4", -1),
         *persist_and_send("PREVOTE", 0, "own4")],
        S(0, PV, height=4), height=4),
    Row("L18 a value for a round already left is dropped",
        [START, tc(0, height=4)], ValueReady(4, 0, OWN4), [], S(1, P, height=4), height=4),
    Row("L14-L16,L19 proposer with its own validValue re-proposes it with vr=validRound",
        [START, ValueReady(4, 0, OWN4), pv(0, OWN4, 1, 2, height=4), pc(4, NIL, 1, height=4)],
        pc(4, NIL, 2, height=4)[0],
        [("ReportRoundChange", 4, 4, 0), ("PersistVote", "PROPOSE", 4, "own4"),
         sched(PROPOSE_T, 4, 4), sched(REBROADCAST_T, 4, 4),
         ("Broadcast", "PROPOSAL", 4, "own4", 0),
         *persist_and_send("PREVOTE", 4, "own4")],  # L28-L30 for its own proposal
        S(4, PV, lock=(0, OWN4), valid=(0, OWN4), height=4), height=4),
    Row("L14-L16,L19 proposer re-proposes a validValue created by another validator",
        [LOCKED_V_R0, pc(3, NIL, 1)], pc(3, NIL, 2)[0],
        [("ReportRoundChange", 1, 3, 0), ("PersistVote", "PROPOSE", 3, "v"),
         sched(PROPOSE_T, 3), sched(REBROADCAST_T, 3),
         ("Broadcast", "PROPOSAL", 3, "v", 0),
         *persist_and_send("PREVOTE", 3, "v")],
        S(3, PV, lock=(0, V), valid=(0, V))),

    # ---- L22-L27: a fresh proposal (vr = -1) ------------------------------------------
    Row("L22-L24,L27 valid v, not locked: prevote id(v)",
        [START], prop(0, V), [("ValidateValue", 1, 0, "v"), *persist_and_send("PREVOTE", 0, "v")], S(0, PV)),
    Row("L23,L25-L27 invalid v: prevote nil",
        [START], prop(0, V), [("ValidateValue", 1, 0, "v"), *persist_and_send("PREVOTE", 0, "nil")], S(0, PV),
        invalid=frozenset({V.hash})),
    Row("L23,L25-L27 a block not on our chain is invalid without asking: prevote nil",
        [START], prop(0, OTHER_CHAIN), persist_and_send("PREVOTE", 0, "nil"), S(0, PV)),
    Row("L23,L25-L27 locked on another value: prevote nil",
        [LOCKED_V_R0, tc(0)], prop(1, W),
        [("ValidateValue", 1, 1, "w"), *persist_and_send("PREVOTE", 1, "nil")],
        S(1, PV, lock=(0, V), valid=(0, V))),
    Row("L23-L24 locked on v itself: prevote id(v)",
        [LOCKED_V_R0, JUMP_TO_4], prop(4, V),
        persist_and_send("PREVOTE", 4, "v"),  # valid(v) already known: not asked again
        S(4, PV, lock=(0, V), valid=(0, V))),
    Row("L22 only for round_p: a proposal of an earlier round is not prevoted",
        [START, tc(0)], prop(0, V), [], S(1, P)),
    Row("L22 only while step=propose: a proposal after timeoutPropose changes nothing",
        [START, tp(0)], prop(0, V), [], S(0, PV)),

    # ---- L28-L33: a re-proposal (vr >= 0) with a prevote quorum for v in vr ----------
    Row("L28-L30,L33 quorum for v in vr, not locked: prevote id(v)",
        [START, pv(0, V, 1, 2, 3), JUMP_TO_4], prop(4, V, vr=0),
        [("ValidateValue", 1, 4, "v"), *persist_and_send("PREVOTE", 4, "v")], S(4, PV)),
    Row("L29-L30 locked on another value in a round <= vr: prevote id(v)",
        [LOCKED_W_R1, JUMP_TO_4, pv(2, V, 1, 2, 3)], prop(4, V, vr=2),
        [("ValidateValue", 1, 4, "v"), *persist_and_send("PREVOTE", 4, "v")],
        S(4, PV, lock=(1, W), valid=(1, W))),
    Row("L29,L31-L32 locked on another value in a round > vr: prevote nil",
        [LOCKED_W_R1, pv(0, V, 1, 2, 3), JUMP_TO_4], prop(4, V, vr=0),
        [("ValidateValue", 1, 4, "v"), *persist_and_send("PREVOTE", 4, "nil")],
        S(4, PV, lock=(1, W), valid=(1, W))),
    Row("L29-L30 locked on v in round = vr: prevote id(v)",
        [LOCKED_V_R0, JUMP_TO_4], prop(4, V, vr=0), persist_and_send("PREVOTE", 4, "v"),
        S(4, PV, lock=(0, V), valid=(0, V))),
    Row("L29-L30 locked on v in a round > vr (lockedValue=v): prevote id(v)",
        [START, pv(0, V, 1, 2, 3), JUMP_TO_4, prop(4, V), pv(4, V, 1, 2), JUMP_TO_8], prop(8, V, vr=0),
        persist_and_send("PREVOTE", 8, "v"),
        S(8, PV, lock=(4, V), valid=(4, V))),
    Row("L29,L31-L32 invalid v: prevote nil",
        [START, pv(0, V, 1, 2, 3), JUMP_TO_4], prop(4, V, vr=0),
        [("ValidateValue", 1, 4, "v"), *persist_and_send("PREVOTE", 4, "nil")], S(4, PV),
        invalid=frozenset({V.hash})),
    Row("L28 no prevote quorum for v in vr: nothing happens",
        [START, pv(0, V, 1, 2), JUMP_TO_4], prop(4, V, vr=0), [], S(4, P)),
    Row("L28 a quorum for another value in vr does not count",
        [START, pv(0, W, 1, 2, 3), JUMP_TO_4], prop(4, V, vr=0), [], S(4, P)),
    Row("L28 the quorum completing after the proposal fires the rule",
        [START, pv(0, V, 1, 2), JUMP_TO_4, prop(4, V, vr=0)], pv(0, V, 3)[0],
        [("ValidateValue", 1, 4, "v"), *persist_and_send("PREVOTE", 4, "v")], S(4, PV)),
    Row("L28 the proposer may re-propose a block created by another validator",
        [START, pv(0, V, 1, 2, 3), tc(0)], prop(1, V, vr=0, by=2),
        [("ValidateValue", 1, 1, "v"), *persist_and_send("PREVOTE", 1, "v")], S(1, PV),),

    # ---- L34-L35 ------------------------------------------------------------------------
    Row("L34-L35 2f+1 prevotes for anything in the prevote step: schedule timeoutPrevote",
        [START, tp(0), pv(0, V, 1)], pv(0, W, 2)[0], [sched(PREVOTE_T, 0)], S(0, PV)),
    Row("L34 for the first time only",
        [START, tp(0), pv(0, V, 1), pv(0, W, 2)], pv(0, V, 3)[0], [], S(0, PV)),
    Row("L34 not in the propose step",
        [START, pv(0, V, 1), pv(0, W, 2)], pv(0, NIL, 3)[0], [], S(0, P)),

    # ---- L36-L43 ------------------------------------------------------------------------
    Row("L36-L43 proposal + 2f+1 prevotes for v in the prevote step: lock, precommit id(v)",
        [START, prop(0, V), pv(0, V, 2)], pv(0, V, 3)[0],
        [sched(PREVOTE_T, 0), *persist_and_send("PRECOMMIT", 0, "v")],
        S(0, PC, lock=(0, V), valid=(0, V))),
    Row("L36-L43 the proposal arriving last completes the rule (valid(v) asked first)",
        [START, tp(0), pv(0, V, 1, 2, 3)], prop(0, V),
        [("ValidateValue", 1, 0, "v"), *persist_and_send("PRECOMMIT", 0, "v")],
        S(0, PC, lock=(0, V), valid=(0, V))),
    Row("L36,L42-L43 in the precommit step: validValue/validRound only, no lock, no vote",
        [START, tp(0), pv(0, V, 1, 2), tv(0), pv(0, V, 3)], prop(0, V),
        [("ValidateValue", 1, 0, "v")], S(0, PC, valid=(0, V))),
    Row("L36 for the first time only: a fourth prevote for v changes nothing",
        [LOCKED_V_R0], pv(0, V, 1)[0], [], S(0, PC, lock=(0, V), valid=(0, V))),
    Row("L36 invalid v: no lock, no validValue",
        [START, prop(0, V), pv(0, V, 1, 2)], pv(0, V, 3)[0], [], S(0, PV),
        invalid=frozenset({V.hash})),
    Row("L36 2f+1 prevotes for v without the proposal: no lock",
        [START, tp(0), pv(0, V, 1, 2)], pv(0, V, 3)[0], [], S(0, PV)),
    Row("L36 a proposal of an earlier round does not count",
        [START, prop(0, V), tc(0), tp(1), pv(1, V, 1, 2)], pv(1, V, 3)[0], [], S(1, PV)),

    # ---- L44-L46 ------------------------------------------------------------------------
    Row("L44-L46 2f+1 prevotes nil in the prevote step: precommit nil",
        [START, tp(0), pv(0, NIL, 1)], pv(0, NIL, 2)[0],
        [sched(PREVOTE_T, 0), *persist_and_send("PRECOMMIT", 0, "nil")], S(0, PC)),
    Row("L44 not in the propose step",
        [START, pv(0, NIL, 1, 2)], pv(0, NIL, 3)[0], [], S(0, P)),
    Row("L44 not in the precommit step",
        [START, tp(0), pv(0, V, 1), tv(0), pv(0, NIL, 2)], pv(0, NIL, 3)[0], [], S(0, PC)),

    # ---- L47-L48 ------------------------------------------------------------------------
    Row("L47-L48 2f+1 precommits for anything: schedule timeoutPrecommit (any step)",
        [START, pc(0, V, 1), pc(0, NIL, 2)], pc(0, W, 3)[0], [sched(PRECOMMIT_T, 0)], S(0, P)),
    Row("L47 for the first time only: our own precommit later does not reschedule",
        [START, tp(0), pc(0, NIL, 1, 2, 3), pv(0, NIL, 1)], pv(0, NIL, 2)[0],
        [sched(PREVOTE_T, 0), *persist_and_send("PRECOMMIT", 0, "nil")], S(0, PC)),
    Row("L47 fewer than 2f+1 precommits: nothing",
        [START, pc(0, V, 1)], pc(0, NIL, 2)[0], [], S(0, P)),

    # ---- L49-L54 ------------------------------------------------------------------------
    Row("L49-L54 decide in the current round; height+1, locks reset, StartRound(0)",
        [LOCKED_V_R0, pc(0, V, 2)], pc(0, V, 3)[0],
        [("Decide", 1, 0, "v"), *start(0, height=2)], S(0, P, height=2)),
    Row("L49-L54 decide a proposal of an earlier round",
        [START, prop(0, V), tc(0), pc(0, V, 1, 2)], pc(0, V, 3)[0],
        [("Decide", 1, 0, "v"), *start(0, height=2)], S(0, P, height=2)),
    Row("L49 2f+1 precommits without the proposal: no decision",
        [START, pc(0, V, 1, 2)], pc(0, V, 3)[0], [sched(PRECOMMIT_T, 0)], S(0, P)),
    Row("L49-L51 the proposal arriving after the precommits decides",
        [START, pc(0, V, 1, 2, 3)], prop(0, V),
        [("ValidateValue", 1, 0, "v"), ("Decide", 1, 0, "v"), *start(0, height=2)], S(0, P, height=2)),
    Row("L50 invalid v: no decision (L22 prevotes nil instead)",
        [START, pc(0, V, 1, 2, 3)], prop(0, V),
        [("ValidateValue", 1, 0, "v"), *persist_and_send("PREVOTE", 0, "nil")], S(0, PV),
        invalid=frozenset({V.hash})),
    Row("L52-L54 the next height's proposer is us: StartRound(0) asks getValue() on the new chain",
        [START, prop(0, V3), pv(0, V3, 1, 2, height=3), pc(0, V3, 1, height=3)], pc(0, V3, 2, height=3)[0],
        [("Decide", 3, 0, "v3"), *start(0, height=4, request_prev="v3")], S(0, P, height=4), height=3),

    # ---- L55-L56 ------------------------------------------------------------------------
    Row("L55-L56 f+1 messages from a higher round: StartRound(round)",
        [START, pv(2, NIL, 1)], pc(2, NIL, 2)[0], start(2), S(2, P)),
    Row("L55-L56 jump to the highest round with f+1 senders, with the lock kept",
        [LOCKED_V_R0, pv(5, NIL, 1), pv(2, NIL, 2)], pv(5, W, 3)[0], start(5),
        S(5, P, lock=(0, V), valid=(0, V))),
    Row("L55 one validator (1/4 of the power) from a higher round: no jump",
        [START], pv(2, NIL, 1)[0], [], S(0, P)),
    Row("L55 exactly 1/3 of the power from a higher round: no jump",
        [START], pv(3, NIL, 2)[0], [], S(0, P), powers=(1, 1, 2, 2)),
    Row("L55 two validators holding exactly 1/3 of the power together: no jump",
        [START, pv(3, NIL, 1)], pv(3, NIL, 2)[0], [], S(0, P), powers=(1, 1, 1, 3)),
    Row("L55 more than 1/3 of the power from a higher round: jump",
        [START, pv(3, NIL, 1)], pv(3, NIL, 2)[0], start(3, powers=(1, 1, 2, 2)), S(3, P),
        powers=(1, 1, 2, 2)),
    Row("L55 a proposal and a vote from the same sender count once",
        [START, prop(2, X)], pv(2, NIL, 3)[0], [], S(0, P)),
    Row("L55 a prevote and a precommit from the same sender count once",
        [START, pv(2, NIL, 1)], pc(2, NIL, 1)[0], [], S(0, P)),
    Row("L55-L56 a proposal and a vote from two senders: jump, then L22 for that proposal",
        [START, prop(2, X)], pv(2, NIL, 1)[0],
        [*start(2), ("ValidateValue", 1, 2, "x"), *persist_and_send("PREVOTE", 2, "x")], S(2, PV)),
    Row("L55 messages from an earlier round never move the round",
        [START, tc(0), tc(1)], pv(0, NIL, 3)[0], [], S(2, P)),

    # ---- L57-L67: timeouts --------------------------------------------------------------
    Row("L57-L60 timeoutPropose in (h, r, propose): prevote nil",
        [START], tp(0), persist_and_send("PREVOTE", 0, "nil"), S(0, PV)),
    Row("L57-L60 timeoutPropose also for the proposer (documented departure): prevote nil",
        [START], tp(0, height=4), persist_and_send("PREVOTE", 0, "nil"), S(0, PV, height=4), height=4),
    Row("L58 timeoutPropose after the step moved on: ignored",
        [START, prop(0, V)], tp(0), [], S(0, PV)),
    Row("L58 timeoutPropose of an earlier round: ignored",
        [START, tc(0)], tp(0), [], S(1, P)),
    Row("L58 timeoutPropose of another height: ignored",
        [START], tp(0, height=1), [], S(0, P, height=2), height=2),
    Row("L61-L64 timeoutPrevote in (h, r, prevote): precommit nil",
        [START, tp(0)], tv(0), persist_and_send("PRECOMMIT", 0, "nil"), S(0, PC)),
    Row("L62 timeoutPrevote in the propose step: ignored",
        [START], tv(0), [], S(0, P)),
    Row("L62 timeoutPrevote in the precommit step: ignored",
        [START, tp(0), tv(0)], tv(0), [], S(0, PC)),
    Row("L62 timeoutPrevote of an earlier round: ignored",
        [START, tc(0), tp(1)], tv(0), [], S(1, PV)),
    Row("L65-L67 timeoutPrecommit: StartRound(r+1), with longer timeouts",
        [START], tc(0), start(1), S(1, P)),
    Row("L65-L67 timeoutPrecommit in round 1: round 2, timeouts grow again",
        [START, tc(0)], tc(1), start(2), S(2, P)),
    Row("L65-L67 timeoutPrecommit into a round we propose: getValue()",
        [START, tc(0), tc(1)], tc(2), start(3), S(3, P)),
    Row("L65-L67 timeoutPrecommit keeps the lock and validValue",
        [LOCKED_V_R0], tc(0), start(1), S(1, P, lock=(0, V), valid=(0, V))),
    Row("L66 timeoutPrecommit of an earlier round: ignored",
        [START, tc(0)], tc(0), [], S(1, P)),
    Row("L66 timeoutPrecommit of another height: ignored",
        [START], tc(0, height=1), [], S(0, P, height=2), height=2),
    Row("REBROADCAST (departure): resend our messages of the height and reschedule",
        [START, tp(0)], TimeoutFired(REBROADCAST_T, 1, 0),
        [("Broadcast", "PREVOTE", 0, "nil"), sched(REBROADCAST_T, 0)], S(0, PV)),
    Row("REBROADCAST of an earlier round: ignored",
        [START, tp(0), tc(0)], TimeoutFired(REBROADCAST_T, 1, 0), [], S(1, P)),
]


def _param(row: Row):
    return pytest.param(row, id=row.name, marks=row.marks)


@pytest.mark.parametrize("row", [_param(r) for r in ROWS])
def test_transition(row: Row) -> None:
    h = Harness(height=row.height, powers=row.powers, invalid=row.invalid, prev_hash=row.prev_hash)
    h.feed_all(row.setup)
    got = summaries(h.feed(row.input))
    assert got == row.effects
    assert h.state() == row.state


def test_every_line_of_algorithm_1_is_cited_by_a_row() -> None:
    cited: set[int] = set()
    for row in ROWS:
        for part in row.name.split()[0].split(","):
            if part.startswith("L"):
                lo, _, hi = part[1:].partition("-L")
                cited.update(range(int(lo), int(hi or lo) + 1))
    assert set(range(10, 68)) - cited == set()


def test_rows_cover_each_line_family_with_more_than_one_case() -> None:
    # A guard against a table that silently shrinks: each family of lines keeps its cases.
    families = {"L22": 0, "L28": 0, "L36": 0, "L49": 0, "L55": 0, "L58": 0, "L62": 0, "L66": 0}
    for row in ROWS:
        for fam in families:
            if fam in row.name:
                families[fam] += 1
    assert all(n >= 2 for n in families.values()), families


# --- persistence before broadcast -------------------------------------------------------


def test_own_vote_is_broadcast_and_counted_only_after_vote_persisted() -> None:
    h = Harness(auto_persist=False)
    h.feed(START)
    (persist,) = h.feed(tp(0))  # L59: the prevote nil is authorised, not yet signed
    assert isinstance(persist, PersistVote)
    assert (persist.state.step, persist.state.round, persist.state.value) == (Step.PREVOTE, 0, None)
    assert h.state() == S(0, PV)  # L60: the step moved on
    # Our own prevote does not count yet: 2 others + (not yet) us is no quorum (no L34, no L44).
    assert summaries(h.feed_all(pv(0, NIL, 1, 2))) == []
    out = h.feed(VotePersisted(persist.state))
    assert summaries(out) == [("Broadcast", "PREVOTE", 0, "nil"), sched(PREVOTE_T, 0),
                              ("PersistVote", "PRECOMMIT", 0, "nil")]
    sent = out[0].message
    assert sent.verify(h.valset, SWARM) and sent.vote.validator == 0
    # A stale acknowledgement (the prevote's again) does not release the precommit.
    assert h.feed(VotePersisted(persist.state)) == []
    assert not any(isinstance(e, Broadcast) and e.message.vote.type is PRECOMMIT for e in h.log)
    out = h.feed(VotePersisted(out[2].state))
    assert summaries(out) == [("Broadcast", "PRECOMMIT", 0, "nil")]


def test_own_proposal_is_broadcast_only_after_vote_persisted() -> None:
    h = Harness(height=4, auto_persist=False)
    h.feed(START)
    (persist,) = h.feed(ValueReady(4, 0, OWN4))
    assert summary(persist) == ("PersistVote", "PROPOSE", 0, "own4")
    out = h.feed(VotePersisted(persist.state))
    assert summaries(out)[:2] == [("Broadcast", "PROPOSAL", 0, "own4", -1), ("PersistVote", "PREVOTE", 0, "own4")]
    assert out[0].message.verify(h.valset, SWARM)


def test_precommit_persists_the_new_lock_l38_l40() -> None:
    h = Harness()
    h.feed_all(LOCKED_V_R0)
    prevote_state, precommit_state = h.persisted
    assert (prevote_state.locked_round, prevote_state.locked_value) == (-1, None)
    assert precommit_state.step is Step.PRECOMMIT and precommit_state.value == V.hash
    assert (precommit_state.locked_round, precommit_state.locked_value) == (0, V.hash)


# --- a peer's invalid message leaves the state unchanged ---------------------------------


def _forged_vote(validator: int, key: int, value: Block | None = W) -> VoteReceived:
    return VoteReceived(signed_vote(PREVOTE, 0, value, validator, key=key))


BAD_INPUTS = [
    ("vote signed by another validator's key", _forged_vote(3, key=2), "bad_signature"),
    ("vote signed for another swarm",
     VoteReceived(signed_vote(PREVOTE, 0, W, 3, swarm=hashlib.sha256(b"other swarm").digest())), "bad_signature"),
    ("vote with a corrupted signature",
     VoteReceived(SignedVote(signed_vote(PREVOTE, 0, W, 3).vote, bytes(64))), "bad_signature"),
    ("vote from an unknown validator index", _forged_vote(4, key=4), "not_member"),
    ("proposal from a validator that is not proposer(h, r)", prop(0, W), "wrong_proposer"),
    ("proposal from an unknown validator index",
     ProposalReceived(signed_proposal(0, blk("z", 7), by=7)), "wrong_proposer"),
    ("proposal signed by another key", ProposalReceived(signed_proposal(0, V_ALT, key=2)), "bad_signature"),
    ("proposal of height+1 with a bad signature",
     ProposalReceived(signed_proposal(0, B2, key=3)), "bad_signature"),
]
FOLLOW_UP = [prop(0, V), pv(0, V, 2, 3), pc(0, V, 2, 3)]


@pytest.mark.parametrize("bad, reason", [pytest.param(b, r, id=n) for n, b, r in BAD_INPUTS])
def test_remote_protocol_error_leaves_the_state_unchanged(bad, reason: str) -> None:
    tainted, clean = Harness(), Harness()
    for h in (tainted, clean):
        h.feed(START)
    before = tainted.state()
    with pytest.raises(RemoteProtocolError) as info:
        tainted.core.handle(bad)
    assert info.value.reason == reason
    assert tainted.state() == before
    # Nothing of the bad message was kept: what follows plays out exactly as without it.
    assert summaries(tainted.feed_all(FOLLOW_UP)) == summaries(clean.feed_all(FOLLOW_UP))
    assert ("Decide", 1, 0, "v") in summaries(tainted.log)


def test_a_bad_decision_certificate_is_a_remote_error_and_changes_nothing() -> None:
    h = Harness()
    h.feed(START)
    two = QuorumCertificate.from_votes([signed_vote(PRECOMMIT, 0, V, i) for i in (1, 2)], 4)
    with pytest.raises(RemoteProtocolError) as info:
        h.core.handle(DecisionReceived(V, two))
    assert info.value.reason == "bad_certificate"
    assert h.state() == S(0, P)
    three = QuorumCertificate.from_votes([signed_vote(PRECOMMIT, 0, V, i) for i in (1, 2, 3)], 4)
    assert summaries(h.feed(DecisionReceived(V, three))) == [("Decide", 1, 0, "v"), *start(0, height=2)]


# --- vote counting ----------------------------------------------------------------------


def test_duplicate_votes_are_not_double_counted() -> None:
    h = Harness()
    h.feed_all([START, tp(0)])  # our prevote nil counts once persisted
    assert summaries(h.feed_all(pv(0, NIL, 1))) == []
    for _ in range(3):  # the same vote again, e.g. re-gossiped: no quorum (L34/L44), no evidence
        assert summaries(h.feed_all(pv(0, NIL, 1))) == []
    assert h.state() == S(0, PV)
    assert summaries(h.feed_all(pv(0, NIL, 2))) == [sched(PREVOTE_T, 0), *persist_and_send("PRECOMMIT", 0, "nil")]


def test_a_second_proposal_for_one_round_yields_one_verifiable_evidence() -> None:
    h = Harness()
    h.feed_all([START, prop(0, V)])
    first, second = signed_proposal(0, V), signed_proposal(0, V_ALT)
    out = h.feed(ProposalReceived(second))
    assert summaries(out) == [("ReportEvidence", 1)]
    ev = out[0].evidence
    assert ev == DuplicateProposalEvidence.of(first, second) and ev.verify(h.valset, SWARM)
    assert DuplicateProposalEvidence.decode(ev.encode()) == ev
    # The same one again, or a third block in that round: nothing more to prove.
    assert h.feed(ProposalReceived(second)) == []
    assert summaries(h.feed(prop(0, blk("v''", 1)))) == []


def test_a_conflicting_vote_yields_one_evidence_and_counts_only_toward_its_own_value() -> None:
    h = Harness()
    h.feed_all([START, prop(0, V)])  # we prevote v
    first = signed_vote(PREVOTE, 0, V_ALT, 2)
    second = signed_vote(PREVOTE, 0, V, 2)
    assert h.feed(VoteReceived(first)) == []
    out = h.feed(VoteReceived(second))
    assert summaries(out) == [("ReportEvidence", 2)]
    ev = out[0].evidence
    assert ev.verify(h.valset, SWARM)
    assert ev == DuplicateVoteEvidence.of(first, second)
    assert (ev.kind, ev.height, ev.round) == ("prevote", 1, 0)
    assert DuplicateVoteEvidence.decode(ev.encode()) == ev
    # A third value from the same validator: no second evidence for the same (validator, round, type).
    assert h.feed_all(pv(0, NIL, 2)) == []
    # Algorithm 1 counts messages: v2's second prevote counts toward v (a proposed value),
    # so us + v1 + v2 make a quorum for v (L36: lock and precommit), while "any prevote"
    # (L34) counts v2 once: 3 of 4 either way.
    assert summaries(h.feed_all(pv(0, V, 1))) == [sched(PREVOTE_T, 0), *persist_and_send("PRECOMMIT", 0, "v")]
    assert h.state() == S(0, PC, lock=(0, V), valid=(0, V))


def test_an_equivocators_vote_for_a_value_nobody_proposed_is_not_counted() -> None:
    h = Harness()
    h.feed_all([START, prop(0, V)])  # we prevote v
    assert summaries(h.feed_all(pv(0, V, 2))) == []
    out = h.feed(VoteReceived(signed_vote(PREVOTE, 0, V_ALT, 2)))  # v_alt: no proposal carries it
    assert summaries(out) == [("ReportEvidence", 2)]
    # v1 joins v_alt: v2's second vote is not kept (bounded memory), so no quorum for v_alt,
    # while "any prevote" counts 3 of 4 (L34).
    assert summaries(h.feed_all(pv(0, V_ALT, 1))) == [sched(PREVOTE_T, 0)]
    assert h.state() == S(0, PV)


# --- heights ----------------------------------------------------------------------------


def test_next_height_messages_are_buffered_then_applied_after_deciding() -> None:
    h = Harness()
    h.feed_all([START, prop(0, V), pv(0, V, 2, 3), pc(0, V, 2)])
    locked = h.state()
    out = h.feed(prop(0, B2))  # height 2, round 0: validator 2's
    assert summaries(out) == [("RequestDecision", 1)]
    assert summaries(h.feed_all(pv(0, B2, 1, 3, height=2))) == []  # asked once only
    assert h.state() == locked
    out = h.feed_all(pc(0, V, 3))
    assert summaries(out) == [
        ("Decide", 1, 0, "v"), *start(0, height=2),
        ("ValidateValue", 2, 0, "b2"), *persist_and_send("PREVOTE", 0, "b2"),  # L22 on the buffered proposal
        sched(PREVOTE_T, 0, height=2), *persist_and_send("PRECOMMIT", 0, "b2"),  # L34, L36 on buffered prevotes
    ]
    assert all(e.state.height == 2 for e in out if isinstance(e, PersistVote))
    assert all(e.message.vote.height == 2 for e in out if isinstance(e, Broadcast))
    assert h.state() == S(0, PC, lock=(0, B2), valid=(0, B2), height=2)


def test_stale_height_messages_are_ignored() -> None:
    h = Harness()
    h.feed_all([START, prop(0, V), pv(0, V, 2, 3), pc(0, V, 2, 3)])
    assert h.state() == S(0, P, height=2)
    stale = [prop(0, V_ALT), *pv(1, NIL, 1, 2, 3), *pc(3, W, 1, 2, 3), tp(0, height=1), tc(0, height=1)]
    assert h.feed_all(stale) == []
    assert h.state() == S(0, P, height=2)
    assert h.core.ignored.get("stale_height") == 7


def test_messages_of_two_heights_ahead_ask_for_a_decision_and_are_dropped() -> None:
    h = Harness()
    h.feed(START)
    b3 = blk("b3", 3, height=3, prev=GENESIS)
    assert summaries(h.feed(prop(0, b3))) == [("RequestDecision", 1)]
    assert h.core.ignored.get("future_height") == 1
    assert h.state() == S(0, P)


def test_decision_carries_a_commit_certificate_that_verifies() -> None:
    h = Harness()
    h.feed_all([LOCKED_V_R0, pc(0, V, 2)])
    (decide,) = [e for e in h.feed_all(pc(0, V, 3)) if isinstance(e, Decide)]
    qc = decide.certificate
    assert qc.verify(h.valset, SWARM) is None
    assert (qc.type, qc.height, qc.round, qc.value, qc.indices()) == (PRECOMMIT, 1, 0, V.hash, [0, 2, 3])
    assert decide.block == V


# --- an idle swarm runs no rounds (start_heights_at_once=False) -------------------------


def test_a_waiting_core_schedules_nothing_after_deciding_until_started() -> None:
    h = Harness(start_heights_at_once=False)
    h.feed_all([START, prop(0, V), pv(0, V, 2, 3), pc(0, V, 2)])
    out = h.feed_all(pc(0, V, 3))
    assert summaries(out) == [("Decide", 1, 0, "v")]  # no L54 yet: nothing to agree on
    assert h.state() == S(0, P, height=2)
    assert summaries(h.feed(START)) == start(0, height=2)
    assert h.feed(START) == []  # a second Started changes nothing


def test_a_peers_message_at_our_height_starts_a_waiting_core() -> None:
    h = Harness(start_heights_at_once=False, height=2, prev_hash=V.hash)
    out = h.feed(prop(0, B2))
    assert summaries(out)[: len(start(0, height=2))] == start(0, height=2)
    assert ("ValidateValue", 2, 0, "b2") in summaries(out)


def test_started_twice_does_not_restart_the_round() -> None:
    h = Harness()
    h.feed_all([START, prop(0, V)])
    assert h.state().step is Step.PREVOTE
    assert h.feed(START) == []
    assert h.state().step is Step.PREVOTE


# --- observers --------------------------------------------------------------------------


def test_observer_never_votes_but_follows_and_decides() -> None:
    h = Harness(me=None)
    assert summaries(h.feed(START)) == [("ReportRoundChange", 1, 0, 1), sched(PROPOSE_T, 0), sched(REBROADCAST_T, 0)]
    assert summaries(h.feed(prop(0, V))) == [("ValidateValue", 1, 0, "v")]
    h.feed_all(pv(0, V, 1, 2, 3))
    assert h.state() == S(0, PC, lock=(0, V), valid=(0, V))  # L36-L43, with no precommit sent
    out = h.feed_all(pc(0, V, 1, 2, 3))
    assert summaries(out) == [("Decide", 1, 0, "v"), *start(0, height=2)]  # L49 is tried before L47
    assert out[0].certificate.verify(h.valset, SWARM) is None
    h.feed_all([tp(0, height=2), tv(0, height=2), TimeoutFired(REBROADCAST_T, 2, 0)])
    assert h.state() == S(0, PC, height=2)  # L57-L64 move the observer's steps too
    assert not any(isinstance(e, (PersistVote, Broadcast, RequestValue)) for e in h.log)
    voter = Harness()
    voter.feed_all([START, tp(0)])
    with pytest.raises(LocalProtocolError):  # an observer has nothing to persist
        h.core.handle(VotePersisted(voter.persisted[0]))


# --- an equivocating proposer ------------------------------------------------------------


def test_l49_decides_the_second_proposal_of_an_equivocating_proposer() -> None:
    h = Harness()
    h.feed_all([START, prop(0, V), prop(0, V_ALT), pc(0, V_ALT, 1, 2)])
    out = h.feed_all(pc(0, V_ALT, 3))
    assert ("Decide", 1, 0, "v'") in summaries(out)
