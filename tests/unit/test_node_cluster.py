"""Whole agent nodes (agents/node.py) over the in-memory network, virtual time.

Four validators with zero-cost ballots (``FixedDeliberator``), a client that submits
motions, optionally an observer. Catch-up reads the other nodes' stores directly, as
the sync protocol would. These are the fast checks of the motion lifecycle and the
driver; tests/integration/test_agreement.py runs the same flows as real processes with
the real model over real libp2p.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from agents.ballot_messages import Commitments, Reveals
from agents.deliberation import FixedDeliberator
from agents.node import AgentNode
from agents.peer import Outbox, PeerGate, serve_peer
from agents.storage import PeerStore
from agents.node import consensus_valset
from consensus.evidence import DuplicateVoteEvidence
from consensus.types import SignedVote, Vote, VoteType
from p2p.envelope import Envelope, MessageType, decode_envelope
from p2p.keys import Identity
from p2p.memnet import MemoryNetwork, run_memory_endpoint
from p2p.messages import Motion
from p2p.swarmfile import PROTOCOL_VERSION, Params, SwarmConfig, Validator, default_topic
from p2p.sync import SyncError, SyncFailure

VALIDATORS = {f"v{i}": Identity(bytes([0x50 + i]) * 32) for i in range(4)}
OBSERVER = Identity(bytes([0x61]) * 32)
CLIENT = Identity(bytes([0x71]) * 32)
PARAMS = Params(client_rate_per_s=1000.0, client_burst=1000, motion_deadline_ms=30_000, reveal_timeout_ms=2000)
SWARM = SwarmConfig("cluster", default_topic("cluster"), PROTOCOL_VERSION,
                    tuple(Validator(n, i.peer_id, i.public_key, 1) for n, i in VALIDATORS.items()), PARAMS)
LIMIT = 120  # virtual seconds for any one test


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 50 ms of real idleness: the store's fsyncs run in
    worker threads, which a zero-threshold autojump would not wait for."""
    return trio.testing.MockClock(autojump_threshold=0.05)


@dataclass
class Member:
    name: str
    identity: Identity
    data: Path
    node: AgentNode | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)
    on_publish: Callable[[Envelope], None] | None = None  # sees each envelope this member publishes
    failing_fetches: int = 0  # this many of its next catch-up requests fail
    fetches: int = 0

    @property
    def running(self) -> bool:
        return self.node is not None and not self.stopped.is_set()


class Recording:
    """Wraps a member's network endpoint: every envelope it publishes is logged (in
    ``Cluster.sent``) and shown to ``Member.on_publish`` before it leaves."""

    def __init__(self, inner, member: Member, log: list[tuple[str, bytes]]) -> None:
        self._inner, self._member, self._log = inner, member, log

    async def publish(self, data: bytes) -> None:
        self._log.append((self._member.name, data))
        if self._member.on_publish is not None:
            self._member.on_publish(decode_envelope(data))
        await self._inner.publish(data)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class Cluster:
    def __init__(self, nursery: trio.Nursery, net: MemoryNetwork, tmp: Path) -> None:
        self.nursery, self.net, self.tmp = nursery, net, tmp
        self.members: dict[str, Member] = {}
        self.client = None
        self.sent: list[tuple[str, bytes]] = []  # (member, envelope) for everything any member published

    async def fetch_for(self, name: str, first: int, last: int):
        me = self.members[name]
        me.fetches += 1
        if me.failing_fetches:
            me.failing_fetches -= 1
            raise SyncError(SyncFailure.TIMEOUT, "injected by the test")
        for other in self.members.values():
            if other.name == name or not other.running:
                continue
            ds = other.node.store.decisions(first, last)
            if ds:
                return other.name, [(d.height, d.block.encode(), d.certificate.encode()) for d in ds]
        return None, []

    async def start(self, name: str, identity: Identity, *, deliberate: bool = True,
                    failing_fetches: int = 0) -> Member:
        m = self.members.get(name) or Member(name, identity, self.tmp / name)
        m.failing_fetches = failing_fetches
        m.stopped = trio.Event()
        m.node = None  # a restart: the old node's store is closed
        self.members[name] = m

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            store = PeerStore.open(m.data, genesis_hash=SWARM.swarm_id)
            try:
                with trio.CancelScope() as scope:
                    m.scope = scope
                    async with trio.open_nursery() as n:
                        gate = PeerGate(SWARM)
                        ep = await n.start(partial(run_memory_endpoint, self.net, identity.peer_id, gate=gate))
                        ep = Recording(ep, m, self.sent)
                        delib = FixedDeliberator(identity, SWARM.swarm_id) if deliberate else None
                        m.node = await n.start(partial(
                            serve_peer, SWARM, identity, ep, gate, store, first_seq=int(trio.current_time() * 1e9) + 1,
                            deliberator=delib, fetch=partial(self.fetch_for, name)))
                        task_status.started(m)
            finally:
                store.close()
                m.stopped.set()

        await self.nursery.start(run)
        return m

    async def stop(self, name: str) -> None:
        m = self.members[name]
        m.scope.cancel()
        await m.stopped.wait()

    async def submit(self, text: str, options=("approve", "reject")) -> bytes:
        if self.client is None:
            self.client = await self.nursery.start(partial(run_memory_endpoint, self.net, CLIENT.peer_id))
            self.outbox = Outbox(SWARM, CLIENT, self.client, first_seq=1)
        env = await self.outbox.send(MessageType.MOTION, Motion(text, tuple(options)).encode())
        return env.message_id

    async def wait_decided(self, names, motion_ids, poll: float = 0.05) -> None:
        async def done() -> bool:
            return all(self.members[n].node is not None and all(self.members[n].node.pool.is_decided(m)
                                                                 for m in motion_ids) for n in names)
        while not await done():
            await trio.sleep(poll)


def assert_same_chain(c: Cluster, names, length: int) -> None:
    chains = [block_hashes(c.members[n]) for n in names]
    assert all(ch == chains[0] for ch in chains) and len(chains[0]) == length, [len(ch) for ch in chains]


def block_hashes(m: Member) -> list[bytes]:
    store = m.node.store
    return [d.block.hash for d in store.decisions(1, store.last_height())]


async def test_four_validators_agree_on_ten_motions(clock, tmp_path) -> None:
    net = MemoryNetwork(seed=3, delay=(0.001, 0.02))
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            for name, ident in VALIDATORS.items():
                await c.start(name, ident)
            ids = [await c.submit(f"Motion number {i}: adopt it?") for i in range(10)]
            await c.wait_decided(list(VALIDATORS), ids)
            chains = [block_hashes(c.members[n]) for n in VALIDATORS]
            assert all(ch == chains[0] for ch in chains)
            assert chains[0], "no decisions"
            for n in VALIDATORS:
                assert c.members[n].node.stats.agreements == 10
            nursery.cancel_scope.cancel()


# --- more scenarios ------------------------------------------------------------------
#
# These use a network without delay: a message published at t arrives at t, so virtual
# time moves only for timers (round timeouts, ticks) and each test costs little real
# time (every autojump of the MockClock waits 50 ms of real idleness).

ALL = list(VALIDATORS)
VALSET = consensus_valset(SWARM)
INSTANT = (0.0, 0.0)


async def decided(c: Cluster, names, motion_ids) -> None:
    await c.wait_decided(names, motion_ids, poll=0.25)  # each poll may cost an autojump: poll slowly


async def until(predicate: Callable[[], bool], poll: float = 0.25) -> None:
    """Wait (in virtual time) for ``predicate``; the caller bounds it with fail_after."""
    while not predicate():
        await trio.sleep(poll)


def last_height(c: Cluster, name: str) -> int:
    return c.members[name].node.core.height - 1


def envelopes(c: Cluster, name: str | None = None, type: MessageType | None = None) -> list[Envelope]:
    out = []
    for who, data in c.sent:
        env = decode_envelope(data)
        if (name is None or who == name) and (type is None or env.type == type):
            out.append(env)
    return out


def votes_sent(c: Cluster, name: str | None = None, start: int = 0) -> list[SignedVote]:
    """Every vote in a VOTE envelope published (by ``name``), from ``c.sent[start:]``."""
    out = []
    for who, data in c.sent[start:]:
        env = decode_envelope(data)
        if env.type == MessageType.VOTE and (name is None or who == name):
            out.append(SignedVote.decode(env.payload))
    return out


def equivocations(c: Cluster) -> list[DuplicateVoteEvidence]:
    """Evidence against every validator that signed two different votes for one
    (height, round, type) in anything published by anyone (votes are relayed too)."""
    first: dict[tuple, SignedVote] = {}
    found = []
    for sv in votes_sent(c):
        assert sv.verify(VALSET, SWARM.swarm_id), f"a published vote does not verify: {sv.vote}"
        v = sv.vote
        known = first.setdefault((v.validator, v.height, v.round, v.type), sv)
        if known.vote.value != v.value:
            ev = DuplicateVoteEvidence.of(known, sv)
            assert ev.verify(VALSET, SWARM.swarm_id)
            found.append(ev)
    return found


def test_the_equivocation_check_finds_a_double_vote(tmp_path) -> None:
    """The check the scenarios end with is not vacuous: two different prevotes signed
    by one validator for one (height, round) in what was published are evidence."""
    c = Cluster(None, None, tmp_path)
    ident = VALIDATORS["v2"]

    def publish(value: bytes | None, seq: int) -> None:
        vote = Vote(VoteType.PREVOTE, 3, 1, value, 2)
        sv = SignedVote(vote, ident.sign(vote.signing_bytes(SWARM.swarm_id)))
        c.sent.append(("v2", Envelope.seal(ident, SWARM.swarm_id, MessageType.VOTE, seq, sv.encode()).encode()))

    publish(None, 1)
    publish(None, 2)  # the same vote re-sent is no equivocation
    assert equivocations(c) == []
    publish(b"\x01" * 32, 3)
    [ev] = equivocations(c)
    assert (ev.validator, ev.first.vote.value, ev.second.vote.value) == (2, None, b"\x01" * 32)


async def test_a_validator_stopped_mid_height_restarts_catches_up_and_votes_again(clock, tmp_path) -> None:
    net = MemoryNetwork(seed=11, delay=INSTANT)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            for name, ident in VALIDATORS.items():
                await c.start(name, ident)
            await decided(c, ALL, [await c.submit("Warm up?")])
            victim = "v3"
            others = [n for n in ALL if n != victim]
            h = c.members[victim].node.core.height
            # Stop the victim the moment it publishes its first vote at height h: the vote
            # is signed and persisted, the rest of the height goes on without it.
            crash_vote: list[SignedVote] = []

            def crash(env: Envelope) -> None:
                if env.type == MessageType.VOTE and not crash_vote:
                    sv = SignedVote.decode(env.payload)
                    if sv.vote.height == h:
                        crash_vote.append(sv)
                        c.members[victim].scope.cancel()

            c.members[victim].on_publish = crash
            during = [await c.submit("Adopt while a validator crashes?")]
            await c.members[victim].stopped.wait()
            [crashed] = crash_vote
            assert crashed.vote.validator == VALSET.index_of(VALIDATORS[victim].public_key)
            with PeerStore.open_readonly(c.members[victim].data, genesis_hash=SWARM.swarm_id) as store:
                durable = store.load_safety_state()  # what it had signed: persisted before it was sent
                assert store.last_height() == h - 1
            assert (durable.height, durable.round, durable.step, durable.value) == \
                (h, crashed.vote.round, crashed.vote.step, crashed.vote.value)
            await decided(c, others, during)
            away = [await c.submit(f"Adopt while it is away, {i}?") for i in range(2)]
            await decided(c, others, away)
            target = last_height(c, "v0")
            assert target > h
            c.members[victim].on_publish = None
            await trio.sleep(1)  # the harness's first_seq comes from the clock: let it move on
            before_restart = len(c.sent)
            await c.start(victim, VALIDATORS[victim])
            await until(lambda: last_height(c, victim) == target)
            assert c.members[victim].fetches >= 1
            assert block_hashes(c.members[victim]) == block_hashes(c.members["v0"])
            # It votes again: a new motion is decided by all four, with its votes.
            after = [await c.submit("Adopt after the restart?")]
            await decided(c, ALL, after)
            new_height = last_height(c, "v0")
            mine = [sv.vote for sv in votes_sent(c, victim, before_restart) if sv.vote.height == new_height]
            assert any(v.type is VoteType.PREVOTE and v.value is not None for v in mine), mine
            assert_same_chain(c, ALL, new_height)
            assert equivocations(c) == []
            nursery.cancel_scope.cancel()


async def test_a_validator_started_after_five_decisions_catches_up_from_genesis(clock, tmp_path) -> None:
    net = MemoryNetwork(seed=12, delay=INSTANT)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            early = ["v0", "v1", "v2"]  # 3 of 4: just a quorum
            for name in early:
                await c.start(name, VALIDATORS[name])
            for i in range(5):
                await decided(c, early, [await c.submit(f"Early motion {i}?")])
            assert last_height(c, "v0") == 5
            late = await c.start("v3", VALIDATORS["v3"])
            await until(lambda: last_height(c, "v3") == 5)
            assert block_hashes(late) == block_hashes(c.members["v0"])
            assert late.node.stats.decisions == 5 and late.node.stats.agreements == 5
            # Now a full member: it decides and votes at the next height.
            await decided(c, ALL, [await c.submit("Late motion?")])
            assert any(sv.vote.height == 6 for sv in votes_sent(c, "v3"))
            assert_same_chain(c, ALL, 6)
            assert equivocations(c) == []
            nursery.cancel_scope.cancel()


async def test_an_observer_follows_and_never_votes(clock, tmp_path) -> None:
    net = MemoryNetwork(seed=13, delay=INSTANT)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            for name, ident in VALIDATORS.items():
                await c.start(name, ident)
            obs = await c.start("observer", OBSERVER, deliberate=False)
            assert not obs.node.is_validator
            ids = []
            for i in range(3):
                ids.append(await c.submit(f"Observed motion {i}?"))
                await decided(c, ALL + ["observer"], ids[-1:])
            assert block_hashes(obs) == block_hashes(c.members["v0"]) and len(block_hashes(obs)) == 3
            assert obs.node.stats.agreements == 3
            # It signed nothing: no vote, no proposal, no ballot, no safety state.
            signed = {MessageType.VOTE, MessageType.PROPOSAL, MessageType.BALLOT_COMMIT, MessageType.BALLOT_REVEAL}
            assert [e for e in envelopes(c, "observer") if e.type in signed] == []
            assert all(sv.vote.validator < len(VALSET) for sv in votes_sent(c))
            assert obs.node.store.load_safety_state() is None
            nursery.cancel_scope.cancel()


async def test_a_cut_off_proposer_is_replaced_by_a_round_change_and_catches_up_after_heal(clock, tmp_path) -> None:
    net = MemoryNetwork(seed=14, delay=INSTANT)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            for name, ident in VALIDATORS.items():
                await c.start(name, ident)
            await decided(c, ALL, [await c.submit("Warm up?")])
            h = c.members["v0"].node.core.height
            cut = ALL[VALSET.proposer(h, 0)]
            others = [n for n in ALL if n != cut]
            net.partition([VALIDATORS[cut].peer_id])
            motion = await c.submit("Adopt without the proposer?")
            await decided(c, others, [motion])
            for n in others:
                d = c.members[n].node.store.decision(h)
                assert d.round >= 1, f"{n} decided height {h} in round {d.round}: the proposer was cut off"
                assert d.block.proposer != VALIDATORS[cut].public_key
            assert last_height(c, cut) == h - 1 and not c.members[cut].node.pool.is_decided(motion)
            fetches = c.members[cut].fetches
            net.heal()
            await until(lambda: last_height(c, cut) == h)
            assert c.members[cut].fetches > fetches
            assert c.members[cut].node.pool.is_decided(motion)
            assert block_hashes(c.members[cut]) == block_hashes(c.members["v0"])
            # And it takes part again.
            await decided(c, ALL, [await c.submit("Adopt with everyone back?")])
            assert_same_chain(c, ALL, h + 1)
            assert equivocations(c) == []
            nursery.cancel_scope.cancel()


async def test_an_idle_swarm_runs_no_rounds(clock, tmp_path) -> None:
    net = MemoryNetwork(seed=15, delay=INSTANT)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            for name, ident in VALIDATORS.items():
                await c.start(name, ident)
            await trio.sleep(60)  # to show that nothing happens
            for name in ALL:
                node = c.members[name].node
                assert (node.core.height, node.core.started, node.driver.pending_timers()) == (1, False, 0), name
                assert node.store.load_safety_state() is None and node.store.last_height() == 0
            types = {MessageType(e.type) for e in envelopes(c)}
            assert types <= {MessageType.STATUS}, types
            assert len(envelopes(c, type=MessageType.STATUS)) >= 4  # they were up and talking
            # After some work the swarm falls quiet again: no next height is started.
            await decided(c, ALL, [await c.submit("One motion, then silence?")])
            await until(lambda: all(c.members[n].node.core.height == 2 for n in ALL))
            quiet_from = len(c.sent)
            await trio.sleep(30)  # to show that nothing happens
            assert votes_sent(c, start=quiet_from) == []
            assert [n for n in ALL if c.members[n].node.core.started or c.members[n].node.core.height != 2] == []
            nursery.cancel_scope.cancel()


async def test_an_observer_whose_catch_up_failed_asks_again(clock, tmp_path) -> None:
    net = MemoryNetwork(seed=16, delay=INSTANT)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            for name, ident in VALIDATORS.items():
                await c.start(name, ident)
            for i in range(2):
                await decided(c, ALL, [await c.submit(f"Before the observer, {i}?")])
            # Its catch-up requests fail for a while (its peers time out, say): those made when
            # it connects, and the one its core makes on hearing of a later height.
            obs = await c.start("observer", OBSERVER, deliberate=False, failing_fetches=10**6)
            await until(lambda: len(obs.node._peers) == 5 and obs.fetches >= 1 and obs.node.catch_up.in_flight is None)
            await decided(c, ALL, [await c.submit("While its fetches fail?")])
            assert last_height(c, "observer") == 0
            # From now on a fetch would succeed; the swarm moves on and the observer hears it.
            obs.failing_fetches = 0
            failed = obs.fetches
            for i in range(2):
                await decided(c, ALL, [await c.submit(f"After the failures, {i}?")])
            with trio.move_on_after(30):  # several rebroadcast periods and ticks
                await until(lambda: last_height(c, "observer") == last_height(c, "v0"), poll=1.0)
            assert (last_height(c, "observer"), obs.fetches > failed) == (last_height(c, "v0"), True)
            nursery.cancel_scope.cancel()


async def test_a_validator_reveals_once_a_quorum_has_committed_or_at_the_reveal_timeout(clock, tmp_path) -> None:
    # Two of four validators deliberate: their two commitments are not more than 2/3 of
    # the power, so each reveals only at reveal_timeout_ms (2 s). Once all four ballot on
    # the next motion, the reveals follow the third commitment, not the timeout.
    net = MemoryNetwork(seed=17, delay=INSTANT)
    first_sent: dict[tuple[str, MessageType, bytes], float] = {}

    def recorder(name: str):
        def seen(env: Envelope) -> None:
            if env.type in (MessageType.BALLOT_COMMIT, MessageType.BALLOT_REVEAL):
                items = (Commitments if env.type == MessageType.BALLOT_COMMIT else Reveals).decode(env.payload).items
                for item in items:
                    motion_id = item.motion_id if env.type == MessageType.BALLOT_COMMIT else item.ballot.motion_id
                    first_sent.setdefault((name, MessageType(env.type), motion_id), trio.current_time())
        return seen

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            for name, ident in VALIDATORS.items():
                m = await c.start(name, ident, deliberate=name in ("v0", "v1"))
                m.on_publish = recorder(name)
            slow = await c.submit("Only two deliberate on this one?")
            await until(lambda: all((n, MessageType.BALLOT_REVEAL, slow) in first_sent for n in ("v0", "v1")))
            for n in ("v0", "v1"):
                waited = first_sent[(n, MessageType.BALLOT_REVEAL, slow)] - first_sent[(n, MessageType.BALLOT_COMMIT, slow)]
                assert 2.0 <= waited < 3.0, (n, waited)  # the timeout (ticks are 1 s apart), not sooner

            for name in ("v2", "v3"):  # now all four deliberate
                await c.stop(name)
                m = await c.start(name, VALIDATORS[name])
                m.on_publish = recorder(name)
            quick = await c.submit("All four deliberate on this one?")
            await until(lambda: all((n, MessageType.BALLOT_REVEAL, quick) in first_sent for n in ALL))
            third_commit = sorted(first_sent[(n, MessageType.BALLOT_COMMIT, quick)] for n in ALL)[2]
            for n in ALL:
                revealed = first_sent[(n, MessageType.BALLOT_REVEAL, quick)]
                assert third_commit <= revealed < third_commit + 1.0, (n, revealed - third_commit)
            nursery.cancel_scope.cancel()


async def test_ballot_messages_leave_at_the_pacers_pace_and_none_is_held_back(clock, tmp_path) -> None:
    """Motions submitted in several bursts: each validator's ballot messages keep to its
    pacer (at most PACE_BURST within any interval), what waited leaves when the alarm
    fires, and every motion is decided."""
    from agents.pacing import PACE_BURST, pace_interval
    interval = pace_interval(len(SWARM.validators))
    times: dict[str, list[float]] = {n: [] for n in ALL}

    def recorder(name: str):
        def record(env: Envelope) -> None:
            if env.type in (MessageType.BALLOT_COMMIT, MessageType.BALLOT_REVEAL):
                times[name].append(trio.current_time())
        return record

    net = MemoryNetwork(seed=5, delay=(0.001, 0.004))
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            c = Cluster(nursery, net, tmp_path)
            for name, ident in VALIDATORS.items():
                m = await c.start(name, ident)
                m.on_publish = recorder(name)
            ids = []
            for burst in range(6):
                ids += [await c.submit(f"Paced motion {burst}.{i}: adopt it?") for i in range(5)]
                await trio.sleep(interval / 3)
            await decided(c, ALL, ids)
            nursery.cancel_scope.cancel()
    for name, ts in times.items():
        # A commitment and a reveal message may leave in one flush (one pacer token).
        flushes = sorted(set(ts))
        assert len(flushes) > PACE_BURST, f"{name}: too few ballot messages to exercise the pacer"
        gaps = [b - a for a, b in zip(flushes, flushes[PACE_BURST:])]
        assert min(gaps) >= interval - 1e-6, f"{name}: {PACE_BURST + 1} flushes within {min(gaps):.4f} s"
