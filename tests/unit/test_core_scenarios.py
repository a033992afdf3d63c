"""Scripted multi-validator interactions: four cores joined by a tiny deterministic
in-test router (a FIFO wire plus a virtual clock for timeouts; the test decides what is
dropped, and when the network heals). Nothing here is random: the same script always
produces the same run.

Height 1 with 4 equal validators: proposer(1, r) = (1 + r) mod 4.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

import nacl.signing
import pytest

from consensus.core import Core, Timeouts
from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.events import (
    Broadcast,
    Decide,
    DecisionReceived,
    PersistVote,
    ProposalReceived,
    ReportEvidence,
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
from consensus.evidence import DuplicateVoteEvidence
from consensus.safety import SafetyRules, SafetyState
from consensus.types import (
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

SWARM = hashlib.sha256(b"conclave scenario swarm").digest()
SEEDS = [hashlib.sha256(b"conclave scenario validator %d" % i).digest() for i in range(4)]
KEYS = [nacl.signing.SigningKey(s) for s in SEEDS]
PKS = [bytes(k.verify_key) for k in KEYS]
GENESIS = hashlib.sha256(b"scenario genesis").digest()
VALSET = ValidatorSet(tuple(Validator(pk, 1) for pk in PKS))
T = Timeouts()
PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT


def block_of(i: int, height: int, round: int, prev: bytes) -> Block:
    """What validator ``i``'s application proposes (its getValue(), L18)."""
    return Block(height, prev, PKS[i], f"block h{height} r{round} by {i}".encode())


def sign_vote(type: VoteType, round: int, value: bytes | None, i: int, height: int = 1) -> SignedVote:
    v = Vote(type, height, round, value, i)
    return SignedVote(v, KEYS[i].sign(v.signing_bytes(SWARM)).signature)


def sign_proposal(round: int, block: Block, i: int, vr: int = -1) -> SignedProposal:
    p = Proposal(block.height, round, block, vr, i)
    return SignedProposal(p, KEYS[i].sign(p.signing_bytes(SWARM)).signature)


@dataclass
class Node:
    core: Core
    incarnation: int


class Cluster:
    """Cores 0..3 and a router. Each core's effects are carried out at once: PersistVote is
    acknowledged (the state remembered as 'on disk'), ValidateValue answered valid,
    RequestValue answered with the node's block, RequestDecision answered from any node that
    decided that height; Broadcast goes onto the wire to every other node; ScheduleTimeout
    onto the virtual clock. Messages and values above ``max_height`` are withheld, so that a
    run does not go on deciding height after height at zero latency."""

    def __init__(self, max_height: int = 1) -> None:
        self.max_height = max_height
        self.nodes: dict[int, Node] = {}
        self.incarnations: dict[int, int] = defaultdict(int)
        self.clock = 0
        self._seq = 0
        self.timers: list[tuple[int, int, int, int, TimeoutFired]] = []
        self.wire: deque[tuple[int, int, SignedProposal | SignedVote]] = deque()
        self.drop: Callable[[int, int, SignedProposal | SignedVote], bool] = lambda src, dst, msg: False
        self.decisions: dict[int, list[Decide]] = defaultdict(list)
        self.evidence: dict[int, list[DuplicateVoteEvidence]] = defaultdict(list)
        self.sent: dict[int, list[SignedProposal | SignedVote]] = defaultdict(list)  # all incarnations
        self.disk: dict[int, SafetyState] = {}  # last persisted SafetyState per validator
        self.effects: dict[int, list] = defaultdict(list)

    # --- lifecycle --------------------------------------------------------------------

    def boot(self, i: int, persisted: SafetyState | None = None, start: bool = True) -> Core:
        self.incarnations[i] += 1
        core = Core(swarm_id=SWARM, valset=VALSET, height=1, prev_hash=GENESIS, timeouts=T,
                    safety=SafetyRules(SEEDS[i], SWARM, i, persisted))
        self.nodes[i] = Node(core, self.incarnations[i])
        if start:
            self.input(i, Started())
        return core

    def crash(self, i: int) -> None:
        del self.nodes[i]  # its timers die with it (incarnation check)

    # --- carrying out effects ---------------------------------------------------------

    def input(self, i: int, inp) -> list:
        node = self.nodes[i]
        out, queue = [], deque([inp])
        while queue:
            for e in node.core.handle(queue.popleft()):
                out.append(e)
                if isinstance(e, PersistVote):
                    self.disk[i] = e.state
                    queue.append(VotePersisted(e.state))
                elif isinstance(e, ValidateValue):
                    queue.append(ValueValidated(e.height, e.block.hash, True))
                elif isinstance(e, RequestValue) and e.height <= self.max_height:
                    queue.append(ValueReady(e.height, e.round, block_of(i, e.height, e.round, e.prev_hash)))
                elif isinstance(e, Broadcast):
                    m = e.message
                    signer = m.vote.validator if isinstance(m, SignedVote) else m.proposal.proposer
                    if signer == i:  # a core also relays others' votes (REBROADCAST): not its own
                        self.sent[i].append(m)
                    for j in range(4):
                        if j != i:
                            self.wire.append((i, j, e.message))
                elif isinstance(e, ScheduleTimeout):
                    self._seq += 1
                    heapq.heappush(self.timers, (self.clock + e.duration_ms, self._seq, i, node.incarnation,
                                                 TimeoutFired(e.kind, e.height, e.round)))
                elif isinstance(e, Decide):
                    self.decisions[i].append(e)
                elif isinstance(e, ReportEvidence):
                    self.evidence[i].append(e.evidence)
                elif isinstance(e, RequestDecision):
                    known = [d for j in self.decisions for d in self.decisions[j] if d.height == e.height]
                    if known:
                        queue.append(DecisionReceived(known[0].block, known[0].certificate))
        self.effects[i].extend(out)
        return out

    def deliver(self) -> None:
        while self.wire:
            src, dst, msg = self.wire.popleft()
            height = msg.vote.height if isinstance(msg, SignedVote) else msg.proposal.height
            if dst not in self.nodes or height > self.max_height or self.drop(src, dst, msg):
                continue
            self.input(dst, ProposalReceived(msg) if isinstance(msg, SignedProposal) else VoteReceived(msg))

    def run(self, until: Callable[[], bool], max_ms: int) -> bool:
        """Deliver messages and fire timers in virtual-time order until ``until()``; whether it held."""
        self.deliver()
        while not until():
            if not self.timers or self.timers[0][0] > max_ms:
                return False
            at, _, i, incarnation, t = heapq.heappop(self.timers)
            self.clock = at
            node = self.nodes.get(i)
            if node is None or node.incarnation != incarnation:
                continue
            self.input(i, t)
            self.deliver()
        return True

    # --- observations -----------------------------------------------------------------

    def decided(self, nodes, height: int = 1) -> bool:
        return all(any(d.height == height for d in self.decisions[i]) for i in nodes)

    def decision(self, i: int, height: int = 1) -> Decide:
        (d,) = [d for d in self.decisions[i] if d.height == height]
        return d

    def votes_sent(self, i: int, type: VoteType | None = None, round: int | None = None,
                   height: int = 1) -> list[Vote]:
        """The distinct votes ``i`` broadcast at ``height`` (re-broadcasts counted once), in order."""
        out: list[Vote] = []
        for m in self.sent[i]:
            if (isinstance(m, SignedVote) and m.vote.height == height and m.vote not in out
                    and (type is None or m.vote.type is type) and (round is None or m.vote.round == round)):
                out.append(m.vote)
        return out


def assert_no_equivocation(cluster: Cluster, validators) -> None:
    """No validator ever signed two different messages at one (height, round, step)."""
    for i in validators:
        seen: dict[tuple, bytes | None] = {}
        for m in cluster.sent[i]:
            if isinstance(m, SignedVote):
                key, value = (m.vote.height, m.vote.round, m.vote.type), m.vote.value
            else:
                key, value = (m.proposal.height, m.proposal.round, "proposal"), m.proposal.block.hash
            assert seen.setdefault(key, value) == value, f"validator {i} equivocated at {key}"


def assert_agreement(cluster: Cluster, nodes, height: int = 1) -> Block:
    blocks = {cluster.decision(i, height).block for i in nodes}
    assert len(blocks) == 1, blocks
    for i in nodes:
        assert cluster.decision(i, height).certificate.verify(VALSET, SWARM) is None
    return blocks.pop()


# --- (a) the proposer of round 0 is down ------------------------------------------------


def test_proposer_of_round_0_down_others_move_to_round_1_and_decide() -> None:
    c = Cluster()
    for i in (0, 2, 3):  # validator 1, proposer of (1, 0), never comes up
        c.boot(i)
    assert c.run(lambda: c.decided((0, 2, 3)), max_ms=60_000)
    b = assert_agreement(c, (0, 2, 3))
    assert {c.decision(i).round for i in (0, 2, 3)} == {1}
    assert b == block_of(2, 1, 1, GENESIS)  # proposer(1, 1) = validator 2
    for i in (0, 2, 3):
        # L57-L60 then L44-L46: nil prevote and nil precommit in round 0, nothing else.
        assert [v.value for v in c.votes_sent(i, round=0)] == [None, None]
        assert [v.type for v in c.votes_sent(i, round=0)] == [PREVOTE, PRECOMMIT]
        assert [(v.type, v.value) for v in c.votes_sent(i, round=1)] == [(PREVOTE, b.hash), (PRECOMMIT, b.hash)]
    assert c.clock < 60_000
    assert_no_equivocation(c, (0, 2, 3))


# --- (b) a 2/2 split during round 0 -----------------------------------------------------


def test_split_2_2_decides_nothing_then_all_decide_the_same_block_after_heal() -> None:
    c = Cluster()
    side = {0: "a", 1: "a", 2: "b", 3: "b"}
    c.drop = lambda src, dst, msg: side[src] != side[dst]
    for i in range(4):
        c.boot(i)
    assert not c.run(lambda: bool(c.decisions), max_ms=60_000)  # a minute of virtual time
    assert dict(c.decisions) == {}
    # Algorithm 1 gives no way out of round 0 to a side holding half the power: L34 and L47
    # need 2f+1 messages of the round, L55 f+1 messages of a later one. So every core
    # waits in round 0, prevote step (validators 0 and 1 prevoted the proposal of 1,
    # 2 and 3 timed out and prevoted nil), re-sending its messages (REBROADCAST).
    assert [c.nodes[i].core.state().round for i in range(4)] == [0, 0, 0, 0]
    assert [c.nodes[i].core.state().step for i in range(4)] == [Step.PREVOTE] * 4
    v = block_of(1, 1, 0, GENESIS)
    assert [c.votes_sent(i, PREVOTE, 0)[0].value for i in range(4)] == [v.hash, v.hash, None, None]
    assert all(not c.votes_sent(i, PRECOMMIT) for i in range(4))
    heal_at = c.clock

    c.drop = lambda src, dst, msg: False
    assert c.run(lambda: c.decided(range(4)), max_ms=heal_at + 60_000)
    b = assert_agreement(c, range(4))
    assert max(c.decision(i).round for i in range(4)) <= 2  # within a bounded number of rounds
    assert c.clock - heal_at <= 30_000
    assert b.height == 1
    assert_no_equivocation(c, range(4))


# --- (c) locks on v, precommits lost, a new proposer proposes w -------------------------

LOCKERS = (0, 1, 3)
V0 = block_of(1, 1, 0, GENESIS)  # validator 1's proposal in round 0
# Round-0 precommits for v get through only along these links: each locker sees one other
# precommit for v (2 of 4, no decision), validator 2 sees two (no decision either).
PRECOMMIT_LINKS = {(0, 1), (1, 3), (3, 0), (0, 2), (1, 2)}


def _lock_scenario_drop(src: int, dst: int, msg) -> bool:
    if isinstance(msg, SignedProposal):
        return msg.proposal.round == 0 and dst == 2  # validator 2 never sees v in round 0
    v = msg.vote
    if v.round == 0 and v.type is PRECOMMIT and v.value is not None:
        return (src, dst) not in PRECOMMIT_LINKS
    return False


def _lock_scenario_until_round_1_is_over() -> Cluster:
    c = Cluster()
    c.drop = _lock_scenario_drop
    for i in range(4):
        c.boot(i)
    assert c.run(lambda: all(c.votes_sent(i, PRECOMMIT, 1) for i in range(4)), max_ms=30_000)
    return c


def test_lock_scenario_round_0_and_1_locked_validators_prevote_nil_on_w() -> None:
    c = _lock_scenario_until_round_1_is_over()
    assert dict(c.decisions) == {}
    for i in LOCKERS:  # L36-L43 in round 0
        assert [(v.type, v.value) for v in c.votes_sent(i, round=0)] == [(PREVOTE, V0.hash), (PRECOMMIT, V0.hash)]
    # validator 2 timed out (L57-L60) and, with 2f+1 prevotes for v but no proposal, did not lock.
    assert [(v.type, v.value) for v in c.votes_sent(2, round=0)] == [(PREVOTE, None), (PRECOMMIT, None)]
    w = block_of(2, 1, 1, GENESIS)
    proposals_r1 = [m.proposal for m in c.sent[2] if isinstance(m, SignedProposal) and m.proposal.round == 1]
    assert [(p.block, p.valid_round) for p in proposals_r1] == [(w, -1)]  # L18-L19: no validValue
    for i in LOCKERS:  # L23, L26: locked on v, w is not v
        assert [v.value for v in c.votes_sent(i, PREVOTE, 1)] == [None]
        assert c.nodes[i].core.state().locked_value == V0.hash
    assert [v.value for v in c.votes_sent(2, PREVOTE, 1)] == [w.hash]
    # L44-L46 everywhere: 3 nil prevotes of 4.
    assert all([v.value for v in c.votes_sent(i, PRECOMMIT, 1)] == [None] for i in range(4))


def test_lock_scenario_v_is_decided_through_a_re_proposal_and_never_w() -> None:
    c = _lock_scenario_until_round_1_is_over()
    assert c.run(lambda: c.decided(range(4)), max_ms=120_000)
    assert assert_agreement(c, range(4)) == V0
    assert {c.decision(i).round for i in range(4)} == {2}
    reproposal = [m.proposal for m in c.sent[3] if isinstance(m, SignedProposal) and m.proposal.round == 2]
    assert [(p.block, p.valid_round) for p in reproposal] == [(V0, 0)]  # L16, L19
    w = block_of(2, 1, 1, GENESIS)
    assert all(v.value != w.hash for i in range(4) for v in c.votes_sent(i, PRECOMMIT))
    assert_no_equivocation(c, range(4))


# --- (d) crash and restart after precommitting v ----------------------------------------


def test_restart_resumes_with_the_lock_and_never_signs_a_conflicting_vote() -> None:
    c = Cluster(max_height=2)
    v = block_of(1, 1, 0, GENESIS)
    c.drop = lambda src, dst, msg: isinstance(msg, SignedVote) and msg.vote.type is PRECOMMIT
    for i in range(4):
        c.boot(i)
    assert c.run(lambda: bool(c.votes_sent(0, PRECOMMIT, 0)), max_ms=10_000)
    assert [(x.type, x.value) for x in c.votes_sent(0, round=0)] == [(PREVOTE, v.hash), (PRECOMMIT, v.hash)]
    assert dict(c.decisions) == {}

    on_disk = c.disk[0].encode()  # what the driver persisted last
    c.crash(0)
    state = SafetyState.decode(on_disk)
    assert (state.height, state.round, state.step, state.value) == (1, 0, Step.PRECOMMIT, v.hash)
    assert (state.locked_round, state.locked_value) == (0, v.hash)

    core = c.boot(0, persisted=state, start=False)
    s = core.state()
    assert (s.height, s.round, s.locked_round, s.locked_value) == (1, 0, 0, v.hash)
    before = len(c.sent[0])
    c.input(0, Started())
    # An equivocating proposer (validator 1) now shows us w in round 0: L22 says prevote nil
    # (we are locked on v), but we precommitted in round 0 already: the rules refuse, silently.
    w = Block(1, GENESIS, PKS[1], b"w")
    out = c.input(0, ProposalReceived(sign_proposal(0, w, 1)))
    assert not any(isinstance(e, (Broadcast, PersistVote)) for e in out)
    assert c.sent[0][before:] == []
    assert core.ignored.get("would_conflict") == 1

    # Heal: the others decide v; validator 0 (holding w as round 0's proposal) catches up
    # through RequestDecision / DecisionReceived once height-2 messages reach it.
    c.drop = lambda src, dst, msg: False
    assert c.run(lambda: c.decided(range(4)), max_ms=60_000)
    assert assert_agreement(c, range(4)) == v
    assert_no_equivocation(c, range(4))
    assert all(x.value in (v.hash, None) for x in c.votes_sent(0))


def drive(core: Core, inputs) -> list:
    """Feed ``inputs`` to a lone core, acknowledging persistence and validity at once."""
    effects, queue = [], deque(inputs)
    while queue:
        for e in core.handle(queue.popleft()):
            effects.append(e)
            if isinstance(e, ValidateValue):
                queue.append(ValueValidated(e.height, e.block.hash, True))
            elif isinstance(e, PersistVote):
                queue.append(VotePersisted(e.state))
    return effects


def test_restarted_validator_stays_silent_even_when_the_rules_would_precommit_w() -> None:
    # Validator 0 precommitted v in round 0, then restarted. A Byzantine majority (impossible
    # with f=1, so this only exercises the last line of defence) shows it w with 2f+1 prevotes:
    # L36 would lock w and precommit it; SafetyRules refuse, and handle() raises nothing.
    v, w = Block(1, GENESIS, PKS[1], b"v"), Block(1, GENESIS, PKS[1], b"w")
    state = SafetyState(1, 0, Step.PRECOMMIT, v.hash, 0, v.hash)
    core = Core(swarm_id=SWARM, valset=VALSET, height=1, prev_hash=GENESIS, timeouts=T,
                safety=SafetyRules(SEEDS[0], SWARM, 0, SafetyState.decode(state.encode())))
    effects = drive(core, [Started(), ProposalReceived(sign_proposal(0, w, 1)),
                           *(VoteReceived(sign_vote(PREVOTE, 0, w.hash, i)) for i in (1, 2, 3)),
                           TimeoutFired(TimeoutKind.PREVOTE, 1, 0)])
    assert not any(isinstance(e, (Broadcast, PersistVote)) for e in effects)
    assert core.ignored.get("would_conflict") == 2  # the nil prevote (L26) and the precommit for w (L40)

    # Re-signing exactly the precommit it made before the crash is allowed (idempotent).
    again = Core(swarm_id=SWARM, valset=VALSET, height=1, prev_hash=GENESIS, timeouts=T,
                 safety=SafetyRules(SEEDS[0], SWARM, 0, state))
    effects = drive(again, [Started(), ProposalReceived(sign_proposal(0, v, 1)),
                            *(VoteReceived(sign_vote(PREVOTE, 0, v.hash, i)) for i in (1, 2, 3))])
    sent = [e.message.vote for e in effects if isinstance(e, Broadcast)]
    assert [(x.type, x.round, x.value) for x in sent] == [(PRECOMMIT, 0, v.hash)]
    assert sent[0] == Vote(PRECOMMIT, 1, 0, v.hash, 0)
    assert again.ignored.get("would_conflict") == 1  # the prevote for v: a step behind the precommit


# --- (e) a Byzantine double voter ---------------------------------------------------------


def test_byzantine_double_voter_is_reported_by_every_honest_core_and_safety_holds() -> None:
    c = Cluster()
    honest = (0, 1, 2)
    v = block_of(1, 1, 0, GENESIS)
    other = Block(1, GENESIS, PKS[3], b"byzantine")
    # Validator 3 signs two prevotes and two precommits in round 0 and sends both to everyone,
    # in a different order to each.
    twins = {t: (sign_vote(t, 0, v.hash, 3), sign_vote(t, 0, other.hash, 3)) for t in (PREVOTE, PRECOMMIT)}
    for dst in honest:
        for t in (PREVOTE, PRECOMMIT):
            a, b = twins[t]
            for msg in ((a, b) if dst != 1 else (b, a)):
                c.wire.append((3, dst, msg))
    for i in honest:
        c.boot(i)
    assert c.run(lambda: c.decided(honest), max_ms=60_000)
    assert assert_agreement(c, honest) == v
    expected = {DuplicateVoteEvidence.of(*twins[t]) for t in (PREVOTE, PRECOMMIT)}
    for i in honest:
        assert len(c.evidence[i]) == 2
        assert set(c.evidence[i]) == expected  # canonical: the same bytes whatever the order
        assert all(ev.validator == 3 and ev.verify(VALSET, SWARM) for ev in c.evidence[i])
    assert len({ev.encode() for i in honest for ev in c.evidence[i]}) == 2
    assert_no_equivocation(c, honest)
