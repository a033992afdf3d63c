"""The consensus driver (agents/driver.py) around a real ``consensus.core.Core``.

The application is a fake that records every call in order, so each test reads as the
sequence of things the driver made the agent do. Timers run under trio's MockClock."""

from __future__ import annotations

import hashlib

import pytest
import trio
import trio.testing

from agents.driver import ConsensusDriver
from consensus.core import Core, Timeouts
from consensus.errors import LocalProtocolError, RemoteProtocolError
from consensus.events import (
    Decide,
    DecisionReceived,
    ProposalReceived,
    ReportRoundChange,
    RequestValue,
    Started,
    TimeoutFired,
    TimeoutKind,
    ValidateValue,
    ValueReady,
    VoteReceived,
)
from consensus.qc import QuorumCertificate
from consensus.safety import SafetyRules, SafetyState
from consensus.types import NIL, Block, Proposal, SignedProposal, SignedVote, Step, Validator, ValidatorSet, Vote, \
    VoteType
from p2p.envelope import MessageType
from p2p.keys import Identity

SWARM_ID = hashlib.sha256(b"driver test swarm").digest()
GENESIS = hashlib.sha256(b"driver genesis").digest()
V = tuple(Identity(bytes([0x40 + i]) * 32) for i in range(4))
VALSET = ValidatorSet(tuple(Validator(v.public_key, 1) for v in V))
PREVOTE, PRECOMMIT = VoteType.PREVOTE, VoteType.PRECOMMIT
# Height 1, four equal validators: proposer(1, r) = (1 + r) mod 4.
assert [VALSET.proposer(1, r) for r in range(4)] == [1, 2, 3, 0]


def block(payload: bytes = b"block", proposer: int = 1, height: int = 1, prev: bytes = GENESIS) -> Block:
    return Block(height, prev, V[proposer].public_key, payload)


B = block()


def signed_proposal(b: Block = B, round: int = 0, by: int = 1) -> SignedProposal:
    p = Proposal(b.height, round, b, -1, by)
    return SignedProposal(p, V[by].sign(p.signing_bytes(SWARM_ID)))


def signed_vote(type: VoteType, value: bytes | None, by: int, round: int = 0, height: int = 1,
                signer: int | None = None) -> SignedVote:
    v = Vote(type, height, round, value, by)
    return SignedVote(v, V[by if signer is None else signer].sign(v.signing_bytes(SWARM_ID)))


class FakeApp:
    """A ``ConsensusApp`` that records what it is asked, in order. ``persist_vote`` can be
    held open (``hold``) to show that nothing is sent before it returns."""

    def __init__(self, valid: bool = True) -> None:
        self.calls: list[tuple] = []
        self.valid = valid
        self.hold: trio.Event | None = None

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def sent(self) -> list[SignedProposal | SignedVote]:
        return [SignedProposal.decode(c[2]) if c[1] is MessageType.PROPOSAL else SignedVote.decode(c[2])
                for c in self.calls if c[0] == "broadcast"]

    def of(self, name: str) -> list:
        return [c[1] for c in self.calls if c[0] == name]

    async def broadcast(self, type: MessageType, payload: bytes) -> None:
        self.calls.append(("broadcast", type, payload))

    async def persist_vote(self, state: SafetyState) -> None:
        self.calls.append(("persist", state))
        if self.hold is not None:
            await self.hold.wait()
        else:
            await trio.lowlevel.checkpoint()  # as a real fsync in a worker thread yields
        self.calls.append(("persisted", state))

    def want_value(self, request: RequestValue) -> None:
        self.calls.append(("want_value", request))

    def validate(self, request: ValidateValue) -> bool:
        self.calls.append(("validate", request))
        return self.valid

    async def decided(self, decision: Decide) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append(("decided", decision))

    def round_changed(self, change: ReportRoundChange) -> None:
        self.calls.append(("round_changed", change))

    def evidence(self, report) -> None:
        self.calls.append(("evidence", report))

    def fetch_decision(self, request) -> None:
        self.calls.append(("fetch_decision", request))

    def rejected(self, error, input) -> None:
        self.calls.append(("rejected", error, input))


def make(me: int = 0, timeouts: Timeouts = Timeouts(), valid: bool = True) -> tuple[ConsensusDriver, FakeApp]:
    core = Core(swarm_id=SWARM_ID, valset=VALSET, height=1, prev_hash=GENESIS, timeouts=timeouts,
                safety=SafetyRules(V[me].seed, SWARM_ID, me), start_heights_at_once=False)
    app = FakeApp(valid)
    return ConsensusDriver(core, app), app


# --- persisting before sending -------------------------------------------------------


async def test_a_vote_is_persisted_and_awaited_before_it_is_broadcast() -> None:
    driver, app = make(me=0)
    await driver.handle(Started())
    assert app.names() == ["round_changed"] and driver.pending_timers() == 2  # propose, rebroadcast
    app.hold = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.handle, TimeoutFired(TimeoutKind.PROPOSE, 1, 0))
        await trio.testing.wait_all_tasks_blocked()
        # The driver is inside persist_vote: the prevote it authorises is not out yet.
        assert app.names()[-1] == "persist" and "broadcast" not in app.names()
        assert app.of("persist") == [SafetyState(1, 0, Step.PREVOTE, NIL)]
        app.hold.set()
    assert app.names() == ["round_changed", "persist", "persisted", "broadcast"]
    [vote] = app.sent()
    assert vote.vote == Vote(PREVOTE, 1, 0, NIL, 0) and vote.verify(VALSET, SWARM_ID)
    assert driver.core.safety.durable == SafetyState(1, 0, Step.PREVOTE, NIL)


async def test_a_proposer_persists_its_proposal_and_its_prevote_each_before_sending() -> None:
    driver, app = make(me=1)  # the proposer of (1, 0)
    await driver.handle(Started())
    assert app.names() == ["round_changed", "want_value"]
    assert app.of("want_value") == [RequestValue(1, 0, GENESIS)]
    await driver.handle(ValueReady(1, 0, B))
    assert app.names()[2:] == ["persist", "persisted", "broadcast", "persist", "persisted", "broadcast"]
    assert [s.position for s in app.of("persist")] == [(1, 0, Step.PROPOSE), (1, 0, Step.PREVOTE)]
    proposal, prevote = app.sent()
    assert proposal.proposal == Proposal(1, 0, B, -1, 1) and proposal.verify(VALSET, SWARM_ID)
    assert prevote.vote == Vote(PREVOTE, 1, 0, B.hash, 1)
    assert "validate" not in app.names()  # its own block needs no asking


# --- validity ------------------------------------------------------------------------


@pytest.mark.parametrize("valid", [True, False])
async def test_validate_value_is_answered_by_the_app(valid: bool) -> None:
    driver, app = make(me=0, valid=valid)
    await driver.handle(Started())
    await driver.handle(ProposalReceived(signed_proposal()))
    assert app.names()[1:] == ["validate", "persist", "persisted", "broadcast"]
    assert app.of("validate") == [ValidateValue(1, 0, B)]
    [prevote] = app.sent()
    assert prevote.vote == Vote(PREVOTE, 1, 0, B.hash if valid else NIL, 0)
    # The answer is remembered: the same block is never asked about twice.
    await driver.handle(ProposalReceived(signed_proposal()))
    await driver.handle(VoteReceived(signed_vote(PREVOTE, B.hash, 2)))
    assert len(app.of("validate")) == 1


async def test_a_proposal_before_started_joins_the_height_and_is_validated() -> None:
    driver, app = make(me=0)
    await driver.handle(ProposalReceived(signed_proposal()))  # a peer had work: join it
    assert app.names() == ["round_changed", "validate", "persist", "persisted", "broadcast"]
    assert driver.core.started and driver.pending_timers() == 2


# --- deciding ------------------------------------------------------------------------


async def test_decide_reaches_the_app_with_its_certificate() -> None:
    driver, app = make(me=0)
    await driver.handle(ProposalReceived(signed_proposal()))
    for i in (1, 2):
        await driver.handle(VoteReceived(signed_vote(PRECOMMIT, B.hash, i)))
    assert "decided" not in app.names()  # 2 of 4 is no quorum
    await driver.handle(VoteReceived(signed_vote(PRECOMMIT, B.hash, 3)))
    [d] = app.of("decided")
    assert (d.height, d.round, d.block) == (1, 0, B)
    assert d.certificate.verify(VALSET, SWARM_ID) is None
    assert (d.certificate.type, d.certificate.value, d.certificate.indices()) == (PRECOMMIT, B.hash, [1, 2, 3])
    assert (driver.core.height, driver.core.prev_hash, driver.core.started) == (2, B.hash, False)


async def test_a_fetched_decision_reaches_the_app() -> None:
    driver, app = make(me=0)
    qc = QuorumCertificate.from_votes([signed_vote(PRECOMMIT, B.hash, i, round=2) for i in (0, 1, 3)], 4)
    await driver.handle(DecisionReceived(B, qc))
    [d] = app.of("decided")
    assert (d.height, d.round, d.block, d.certificate) == (1, 2, B, qc)
    assert driver.core.height == 2


async def test_a_message_from_a_later_height_asks_the_app_to_catch_up() -> None:
    driver, app = make(me=0)
    later = block(height=3, proposer=0, prev=hashlib.sha256(b"h2").digest())
    await driver.handle(VoteReceived(signed_vote(PREVOTE, later.hash, 2, height=3)))
    assert [r.height for r in app.of("fetch_decision")] == [1]
    assert not driver.core.started


# --- remote errors -------------------------------------------------------------------


def _qc(*signers: int, type: VoteType = PRECOMMIT, value: bytes | None = B.hash) -> QuorumCertificate:
    return QuorumCertificate.from_votes([signed_vote(type, value, i) for i in signers], 4)


REMOTE_ERRORS = {
    "vote signed by another key": (VoteReceived(signed_vote(PREVOTE, B.hash, 2, signer=3)), "bad_signature"),
    "vote from outside the set": (VoteReceived(SignedVote(Vote(PREVOTE, 1, 0, NIL, 7), bytes(64))), "not_member"),
    "proposal from the wrong proposer": (ProposalReceived(signed_proposal(block(proposer=2), by=2)),
                                         "wrong_proposer"),
    "proposal with a bad signature": (ProposalReceived(SignedProposal(signed_proposal().proposal, bytes(64))),
                                      "bad_signature"),
    "decision without a quorum": (DecisionReceived(B, _qc(1, 2)), "bad_certificate"),
    "decision on another chain": (DecisionReceived(block(prev=bytes(32)), QuorumCertificate.from_votes(
        [signed_vote(PRECOMMIT, block(prev=bytes(32)).hash, i) for i in (1, 2, 3)], 4)), "bad_decision"),
}


@pytest.mark.parametrize("started", [False, True], ids=["idle", "started"])
@pytest.mark.parametrize("bad, reason", list(REMOTE_ERRORS.values()), ids=list(REMOTE_ERRORS))
async def test_remote_errors_reach_the_app_and_leave_the_core_unchanged(bad, reason: str, started: bool) -> None:
    driver, app = make(me=0)
    if started:
        await driver.handle(Started())
        await driver.handle(VoteReceived(signed_vote(PREVOTE, B.hash, 2)))
    core = driver.core
    before = (core.state(), core.started, dict(core.ignored), core.votes.power(0, PREVOTE, B.hash),
              driver.pending_timers(), len(app.calls))
    await driver.handle(bad)
    [(name, error, inp)] = app.calls[before[-1]:]
    assert name == "rejected" and inp is bad
    assert isinstance(error, RemoteProtocolError) and error.reason == reason
    assert (core.state(), core.started, dict(core.ignored), core.votes.power(0, PREVOTE, B.hash),
            driver.pending_timers(), len(app.calls) - 1) == before
    # And the driver goes on with the next input as if nothing happened.
    await driver.handle(ProposalReceived(signed_proposal()))
    assert app.sent()[-1].vote == Vote(PREVOTE, 1, 0, B.hash, 0)


async def test_a_local_error_is_not_swallowed() -> None:
    driver, app = make(me=0)  # not the proposer of (1, 0): a value supplied to it is our bug
    await driver.handle(Started())
    with pytest.raises(LocalProtocolError):
        await driver.handle(ValueReady(1, 0, block(proposer=0)))
    assert "rejected" not in app.names()


# --- timers --------------------------------------------------------------------------


class Fired:
    """Feeds fired timeouts back into the driver (as the node's loop does) and records
    (virtual time, timeout)."""

    def __init__(self, driver: ConsensusDriver) -> None:
        self.driver, self.log = driver, []

    async def __call__(self, t: TimeoutFired) -> None:
        self.log.append((trio.current_time(), t))
        await self.driver.handle(t)


async def _wait_fired(fired: Fired, n: int) -> None:
    with trio.fail_after(100):
        while len(fired.log) < n:
            await trio.sleep(0.01)


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_run_timers_fires_in_deadline_order_even_when_scheduled_out_of_order(clock) -> None:
    # Long propose timeout, short prevote timeout: the prevote timer, scheduled last,
    # is due first.
    driver, app = make(me=0, timeouts=Timeouts(propose_ms=10_000, prevote_ms=1000, precommit_ms=1000, delta_ms=0))
    t0 = trio.current_time()
    fired = Fired(driver)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run_timers, fired)
        await driver.handle(Started())  # PROPOSE due at +10, REBROADCAST at +12
        await trio.sleep(1)
        await driver.handle(ProposalReceived(signed_proposal()))  # we prevote B
        for i in (2, 3):  # two nil prevotes: 2f+1 prevotes for anything, no quorum for one value
            await driver.handle(VoteReceived(signed_vote(PREVOTE, NIL, i)))
        assert driver.pending_timers() == 3  # + PREVOTE due at +2 (L34-L35)
        await _wait_fired(fired, 3)
        nursery.cancel_scope.cancel()
    assert [(round(at - t0, 6), t.kind) for at, t in fired.log] == [
        (2.0, TimeoutKind.PREVOTE), (10.0, TimeoutKind.PROPOSE), (12.0, TimeoutKind.REBROADCAST)]
    # Each reached the core: the prevote timeout made us precommit nil (L61-L64); the
    # propose timeout came too late to matter; the rebroadcast re-sent our two votes.
    votes = [m.vote for m in app.sent()]
    assert votes == [Vote(PREVOTE, 1, 0, B.hash, 0), Vote(PRECOMMIT, 1, 0, NIL, 0),
                     Vote(PREVOTE, 1, 0, B.hash, 0), Vote(PRECOMMIT, 1, 0, NIL, 0)]
    assert driver.core.state().step is Step.PRECOMMIT
    assert driver.pending_timers() == 1  # the next rebroadcast


async def test_timers_with_equal_deadlines_fire_in_the_order_scheduled(clock) -> None:
    # propose 3 s, rebroadcast 3 + 1 + 1 = 5 s; at +4 a prevote timer of 1 s is also due at +5.
    driver, app = make(me=0, timeouts=Timeouts(propose_ms=3000, prevote_ms=1000, precommit_ms=1000, delta_ms=0))
    t0 = trio.current_time()
    fired = Fired(driver)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run_timers, fired)
        await driver.handle(Started())
        await _wait_fired(fired, 1)  # propose timeout at +3: we prevote nil
        await trio.sleep_until(t0 + 4)
        for i in (2, 3):
            await driver.handle(VoteReceived(signed_vote(PREVOTE, B.hash, i)))
        await _wait_fired(fired, 3)
        nursery.cancel_scope.cancel()
    assert [(round(at - t0, 6), t.kind) for at, t in fired.log] == [
        (3.0, TimeoutKind.PROPOSE), (5.0, TimeoutKind.REBROADCAST), (5.0, TimeoutKind.PREVOTE)]
    assert [m.vote.type for m in app.sent()] == [PREVOTE, PREVOTE, PRECOMMIT]  # nil, re-sent nil, nil


async def test_a_timeout_of_an_old_round_changes_nothing(clock) -> None:
    driver, app = make(me=0, timeouts=Timeouts(propose_ms=3000, prevote_ms=1000, precommit_ms=1000, delta_ms=0))
    await driver.handle(Started())
    # f+1 messages from round 2 make us skip there (L55); round 0's timeouts are stale.
    for i in (2, 3):
        await driver.handle(VoteReceived(signed_vote(PREVOTE, NIL, i, round=2)))
    assert driver.core.round == 2
    n = len(app.calls)
    for kind in TimeoutKind:
        await driver.handle(TimeoutFired(kind, 1, 0))
    assert app.calls[n:] == [] and driver.core.state().step is Step.PROPOSE


async def test_run_timers_waits_for_the_first_timer_and_stops_on_cancel(clock) -> None:
    driver, _ = make(me=0)
    fired = Fired(driver)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run_timers, fired)
        await trio.sleep(3600)  # nothing scheduled: nothing fires
        assert fired.log == []
        await driver.handle(Started())
        await _wait_fired(fired, 1)
        nursery.cancel_scope.cancel()
    assert fired.log[0][1] == TimeoutFired(TimeoutKind.PROPOSE, 1, 0)
