"""The peer service (agents/peer.py) over the in-memory network: gate, motions, roles,
partitions, durable dedupe and the log events an operator sees.

Six peers run in one process: four validators, one observer (a key outside the
validator set, running ``serve_peer``) and one client (a bare endpoint that publishes,
like ``conclave propose``). Every endpoint is started with its own ``PeerGate``; every
served peer has its own ``PeerStore`` in ``tmp_path / name``. No deliberator is passed,
so validators never ballot and nothing is decided: these tests cover the gossip path
(gate, motion pool, pending-motion table, log events), not agreement
(tests/unit/test_node_cluster.py does that).

All peers log through the one "conclave.peer" logger, so each peer's tasks run with a
context variable naming the peer (trio copies the spawning task's context into every
task it starts): the recording handler reads it to tell whose record it is.

Waits are driven by the records themselves (the handler wakes waiting tasks) and are
bounded by ``trio.fail_after``. Only to show that something did NOT happen do the
tests let virtual time pass: ``MAX_DELAY`` bounds every delivery of the hub.

Virtual time jumps only after 50 ms of real idleness (the ``clock`` fixture): the store
runs its SQLite transactions in worker threads, which a zero-threshold autojump clock
would not wait for (it would jump to the next deadline while a thread works).
"""

from __future__ import annotations

import contextvars
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from agents import __version__
from agents.node import AgentNode
from agents.peer import Outbox, PeerGate, serve_peer
from agents.storage import PeerStore
from p2p.envelope import ENVELOPE_VERSION, Envelope, MessageType, signing_bytes
from p2p.errors import RejectReason
from p2p.keys import Identity
from p2p.memnet import MemoryEndpoint, MemoryNetwork, run_memory_endpoint
from p2p.messages import Motion, Status
from p2p.swarmfile import PROTOCOL_VERSION, Params, SwarmConfig, Validator, default_topic

MAX_DELAY = 0.010  # the hub's delay upper bound, passed explicitly below
TIMEOUT = 10  # virtual seconds; below the 30 s status interval and the 120 s motion deadline

VALIDATORS = {f"v{i}": Identity(bytes([0x20 + i]) * 32) for i in range(1, 5)}
OBSERVER = Identity(bytes([0x31]) * 32)
CLIENT = Identity(bytes([0x41]) * 32)
IDENTITIES = {**VALIDATORS, "observer": OBSERVER, "client": CLIENT}
SERVED = ("v1", "v2", "v3", "v4", "observer")  # the peers running serve_peer


def make_swarm(name: str) -> SwarmConfig:
    members = tuple(Validator(n, i.peer_id, i.public_key, 1) for n, i in VALIDATORS.items())
    return SwarmConfig(name, default_topic(name), PROTOCOL_VERSION, members, Params(max_message_bytes=1024))


SWARM = make_swarm("peertest")
OTHER_SWARM = make_swarm("elsewhere")


def client_name(identity: Identity) -> str:
    """How the logs name another peer outside the validator set."""
    pid = identity.peer_id
    return f"client {pid[:8]}…{pid[-6:]}"


def observer_name(identity: Identity) -> str:
    """How an observer names itself (``AgentNode.name``)."""
    return f"observer-{identity.peer_id[-6:]}"


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 50 ms of real idleness: the store's SQLite
    calls run in worker threads, which a zero-threshold autojump would not wait for."""
    return trio.testing.MockClock(autojump_threshold=0.05)


# --- log capture ---------------------------------------------------------------------

PEER: contextvars.ContextVar[str | None] = contextvars.ContextVar("test_peer_service_peer", default=None)


@contextmanager
def as_peer(name: str) -> Iterator[None]:
    """Tasks started inside this block log as ``name``."""
    token = PEER.set(name)
    try:
        yield
    finally:
        PEER.reset(token)


@dataclass(frozen=True)
class Rec:
    peer: str | None
    level: int
    event: str | None
    fields: dict
    msg: str


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[Rec] = []
        self._changed = trio.lowlevel.ParkingLot()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(
            Rec(PEER.get(), record.levelno, getattr(record, "event", None), dict(getattr(record, "fields", {})),
                record.getMessage())
        )
        self._changed.unpark_all()

    def of(self, peer: str, event: str) -> list[Rec]:
        return [r for r in self.records if r.peer == peer and r.event == event]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Until ``predicate()`` holds; re-checked after every record."""
        while not predicate():
            await self._changed.park()

    async def wait_each(self, peers: tuple[str, ...] | list[str], event: str, count: int = 1) -> None:
        await self.wait_for(lambda: all(len(self.of(p, event)) >= count for p in peers))


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    logger = logging.getLogger("conclave.peer")
    handler = Recorder()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --- peers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """A peer's counters, read live: motions and duplicates from the node, rejections
    (a Counter of RejectReason) from the gate."""

    node: AgentNode
    gate: PeerGate

    @property
    def motions(self) -> int:
        return self.node.stats.motions

    @property
    def duplicates(self) -> int:
        return self.node.stats.duplicates

    @property
    def rejected(self) -> Counter[RejectReason]:
        return self.gate.validator.rejected


@dataclass
class Peer:
    name: str
    identity: Identity
    gate: PeerGate = field(default_factory=lambda: PeerGate(SWARM))
    endpoint: MemoryEndpoint | None = None
    store: PeerStore | None = None
    node: AgentNode | None = None
    stats: Stats | None = None
    _nursery: trio.Nursery | None = None
    _stopped: trio.Event = field(default_factory=trio.Event)

    async def _run(self, net: MemoryNetwork, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.endpoint = await nursery.start(
                    partial(run_memory_endpoint, net, self.identity.peer_id, gate=self.gate)
                )
                task_status.started()
        finally:
            self._stopped.set()

    async def serve(self, store: PeerStore, first_seq: int = 0) -> Stats:
        """Run serve_peer on ``store``, which is closed once serve_peer has returned (when
        the peer stops, or the swarm is cancelled)."""
        self.store = store
        with as_peer(self.name):
            self.node = await self._nursery.start(self._serve, self.store, first_seq)
        self.stats = Stats(self.node, self.gate)
        return self.stats

    async def _serve(self, store: PeerStore, first_seq: int, *, task_status: trio.TaskStatus[AgentNode]) -> None:
        try:
            await serve_peer(SWARM, self.identity, self.endpoint, self.gate, store, first_seq=first_seq,
                             task_status=task_status)
        finally:
            store.close()  # serve_peer waits for a store call in flight, so none is running

    async def stop(self) -> None:
        """Cancel the peer (its endpoint and serve_peer) and wait until it has detached."""
        self._nursery.cancel_scope.cancel()
        await self._stopped.wait()


class Swarm:
    def __init__(self, nursery: trio.Nursery, net: MemoryNetwork, recorder: Recorder, data: Path) -> None:
        self.nursery, self.net, self.log, self.data = nursery, net, recorder, data
        self.peers: dict[str, Peer] = {}
        self.stores: list[PeerStore] = []  # every store opened, for running() to close

    async def attach(self, name: str, identity: Identity | None = None) -> Peer:
        peer = Peer(name, identity or IDENTITIES[name])
        with as_peer(name):
            await self.nursery.start(peer._run, self.net)
        self.peers[name] = peer
        return peer

    def __getitem__(self, name: str) -> Peer:
        return self.peers[name]

    async def serve(self, name: str, first_seq: int = 0) -> Stats:
        """Run serve_peer for the attached peer ``name`` on its store in ``data / name``."""
        store = PeerStore.open(self.data / name)
        self.stores.append(store)
        return await self.peers[name].serve(store, first_seq)

    def outbox(self, name: str, first_seq: int = 0) -> Outbox:
        peer = self.peers[name]
        return Outbox(SWARM, peer.identity, peer.endpoint, first_seq=first_seq)


@asynccontextmanager
async def running(recorder: Recorder, data: Path, net: MemoryNetwork | None = None) -> AsyncIterator[Swarm]:
    """All six endpoints attached first, then serve_peer on the five served peers (each
    with a store in ``data / name``), so every validator's start-up STATUS reaches every
    peer; returns once it has (each served peer logged four status_received), so nothing
    is in flight when the test begins. Every store is closed when this exits."""
    net = net or MemoryNetwork(seed=11, delay=(0.001, MAX_DELAY))
    swarm: Swarm | None = None
    try:
        async with trio.open_nursery() as nursery:
            swarm = Swarm(nursery, net, recorder, data)
            for name in IDENTITIES:
                await swarm.attach(name)
            for name in SERVED:
                await swarm.serve(name)
            await recorder.wait_each(SERVED, "status_received", 4)
            yield swarm
            nursery.cancel_scope.cancel()
    finally:
        for store in swarm.stores if swarm else ():
            store.close()  # idempotent: normally closed already, as its peer stopped


async def pass_max_delay() -> None:
    """Let virtual time pass beyond any delivery already scheduled: for negative checks."""
    await trio.sleep(2 * MAX_DELAY)


def motion_bytes(text: str = "Adopt the wire format?", options: tuple[str, ...] = ("approve", "reject")) -> bytes:
    return Motion(text, options).encode()


# --- motions -------------------------------------------------------------------------


@pytest.mark.parametrize("sender", ["client", "v2"])
async def test_a_motion_reaches_every_validator_and_the_observer_exactly_once(
    clock: trio.testing.MockClock, recorder: Recorder, tmp_path: Path, sender: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(recorder, tmp_path) as swarm:
            outbox = swarm.outbox(sender, first_seq=100)  # above v2's STATUS seq
            env = await outbox.send(MessageType.MOTION, motion_bytes("Adopt  the\nwire format?", ("yes", "no", "later")))
            await recorder.wait_each(SERVED, "motion_received")
            await pass_max_delay()

            motion_id = env.message_id.hex()
            who = "v2" if sender == "v2" else client_name(CLIENT)
            for name in SERVED:
                assert swarm[name].stats.motions == 1, name
                assert swarm[name].stats.duplicates == 0
                assert not swarm[name].stats.rejected
                (rec,) = recorder.of(name, "motion_received")
                assert rec.level == logging.INFO
                assert rec.fields == {"motion_id": motion_id, "sender": who, "text": "Adopt  the\nwire format?",
                                      "options": ["yes", "no", "later"]}
                # the human line is one line, the text's whitespace collapsed
                assert rec.msg == f'MOTION {motion_id[:12]} from {who}: "Adopt the wire format?" [yes / no / later]'
                assert swarm[name].gate.validator.accepted == 5  # 4 STATUS + the motion
            # the client's own gate saw its echo too
            assert swarm["client"].gate.validator.accepted == 5


async def test_gossip_duplicates_stop_at_the_gate_as_replays(
    clock: trio.testing.MockClock, recorder: Recorder, tmp_path: Path
) -> None:
    net = MemoryNetwork(seed=5, delay=(0.001, MAX_DELAY), duplicate=1.0)  # every copy arrives twice
    with trio.fail_after(TIMEOUT):
        async with running(recorder, tmp_path, net) as swarm:
            await swarm.outbox("client").send(MessageType.MOTION, motion_bytes())
            await recorder.wait_each(SERVED, "motion_received")
            await pass_max_delay()
            for name in SERVED:
                stats = swarm[name].stats
                assert stats.motions == 1
                assert stats.duplicates == 0  # the motion pool never saw the second copy
                # second copies of the other validators' STATUS and of the motion (own echo is single)
                replays = 4 if name.startswith("v") else 5
                assert stats.rejected == Counter({RejectReason.REPLAY: replays}), name
                assert swarm[name].endpoint.stats.gated == replays


async def test_invalid_messages_are_refused_by_every_gate_and_never_reach_the_service(
    clock: trio.testing.MockClock, recorder: Recorder, tmp_path: Path
) -> None:
    v1 = VALIDATORS["v1"]
    payload = motion_bytes()
    # claims to come from v1, signed by the client
    forged = Envelope(ENVELOPE_VERSION, SWARM.swarm_id, MessageType.MOTION, v1.public_key, 7, payload,
                      CLIENT.sign(signing_bytes(ENVELOPE_VERSION, SWARM.swarm_id, MessageType.MOTION,
                                                v1.public_key, 7, payload)))
    bad = {
        RejectReason.BAD_SIGNATURE: forged.encode(),
        RejectReason.WRONG_SWARM: Envelope.seal(CLIENT, OTHER_SWARM.swarm_id, MessageType.MOTION, 1, payload).encode(),
        RejectReason.NOT_MEMBER: Envelope.seal(
            CLIENT, SWARM.swarm_id, MessageType.STATUS, 2, Status("v1", "9.9", ()).encode()
        ).encode(),
        RejectReason.UNDECODABLE: b"\xc1 definitely not msgpack",
        # correctly signed, but over this swarm's max_message_bytes (1024)
        RejectReason.TOO_LARGE: Envelope.seal(CLIENT, SWARM.swarm_id, MessageType.MOTION, 3,
                                              motion_bytes("x" * 2000)).encode(),
    }
    assert len(bad[RejectReason.TOO_LARGE]) > SWARM.params.max_message_bytes
    with trio.fail_after(TIMEOUT):
        async with running(recorder, tmp_path) as swarm:
            received = {name: swarm[name].endpoint.stats.received for name in SERVED}
            assert received == dict.fromkeys(SERVED, 4)  # the STATUS messages only
            for data in bad.values():
                await swarm["client"].endpoint.publish(data)
            everyone = list(IDENTITIES)  # the client's own gate refuses its echoes as well
            await recorder.wait_each(everyone, "message_rejected", len(bad))
            await pass_max_delay()

            expected = Counter(dict.fromkeys(bad, 1))
            for name in everyone:
                peer = swarm[name]
                assert peer.endpoint.stats.gated == len(bad), name
                assert peer.gate.validator.rejected == expected, name
                records = recorder.of(name, "message_rejected")
                assert all(r.level == logging.DEBUG for r in records)
                assert {r.fields["reason"] for r in records} == {reason.value for reason in bad}
                assert {r.fields["source"] for r in records} == {CLIENT.peer_id}
                for r in records:
                    assert r.fields["bytes"] == len(bad[RejectReason(r.fields["reason"])])
                    assert r.msg.startswith(f"rejected message via {CLIENT.peer_id}: {r.fields['reason']}: ")
            for name in SERVED:
                peer = swarm[name]
                assert peer.stats.rejected == expected
                assert peer.endpoint.stats.received == received[name]  # nothing was delivered
                assert peer.stats.motions == 0
                assert recorder.of(name, "motion_received") == []


async def test_an_observer_follows_but_only_validators_announce_status(
    clock: trio.testing.MockClock, recorder: Recorder, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(recorder, tmp_path) as swarm:
            (started,) = recorder.of("observer", "peer_started")
            assert started.level == logging.INFO
            assert started.fields["role"] == "observer"
            assert started.fields["name"] == observer_name(OBSERVER)  # how the node names itself
            assert not swarm["observer"].node.is_validator
            (started,) = recorder.of("v3", "peer_started")
            assert started.fields == {
                "name": "v3", "role": "validator", "peer_id": VALIDATORS["v3"].peer_id, "swarm": SWARM.name,
                "swarm_id": SWARM.swarm_id.hex(), "listen": [], "version": __version__, "height": 0, "pending": 0,
            }
            assert started.msg == (
                f"peer v3 started as validator of swarm {SWARM.name}: id {VALIDATORS['v3'].peer_id}, "
                "listening on nothing; at height 0, 0 motions pending"
            )
            assert swarm["v3"].node.is_validator

            await pass_max_delay()
            for name in VALIDATORS:
                assert swarm[name].endpoint.stats.published == 1  # one STATUS at start
            assert swarm["observer"].endpoint.stats.published == 0
            for name in SERVED:
                statuses = recorder.of(name, "status_received")
                assert sorted(r.fields["name"] for r in statuses) == ["v1", "v2", "v3", "v4"]
                assert all(r.level == logging.DEBUG for r in statuses)

            env = await swarm.outbox("client").send(MessageType.MOTION, motion_bytes())
            await recorder.wait_each(SERVED, "motion_received")
            assert swarm["observer"].stats.motions == 1
            (rec,) = recorder.of("observer", "motion_received")
            assert rec.fields["motion_id"] == env.message_id.hex()
            # the observer keeps the motion like a validator does, but never speaks
            assert [pm.motion_id for pm in swarm["observer"].store.pending_motions()] == [env.message_id]
            await pass_max_delay()
            assert swarm["observer"].endpoint.stats.published == 0


async def test_a_partitioned_observer_misses_a_motion_for_good_and_gets_the_next_after_heal(
    clock: trio.testing.MockClock, recorder: Recorder, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(recorder, tmp_path) as swarm:
            outbox = swarm.outbox("client")
            majority = [IDENTITIES[n].peer_id for n in ("v1", "v2", "v3", "v4", "client")]
            swarm.net.partition(majority, [OBSERVER.peer_id])
            await recorder.wait_each(["observer"], "peer_left", 5)

            lost = await outbox.send(MessageType.MOTION, motion_bytes("Before the heal?"))
            await recorder.wait_each(list(VALIDATORS), "motion_received")
            await pass_max_delay()
            assert swarm["observer"].stats.motions == 0

            swarm.net.heal()
            await recorder.wait_each(["observer"], "peer_joined", 10)  # 5 at start, 5 after the heal
            found = await outbox.send(MessageType.MOTION, motion_bytes("After the heal?"))
            await recorder.wait_each(list(VALIDATORS), "motion_received", 2)
            await recorder.wait_each(["observer"], "motion_received")
            await trio.sleep(1)  # long after any delivery could still happen

            # This layer does not recover messages lost to a partition: the observer only
            # ever sees the motion published after the heal (recovery is the protocol's job).
            assert [r.fields["motion_id"] for r in recorder.of("observer", "motion_received")] == [
                found.message_id.hex()
            ]
            assert lost.message_id.hex() not in {r.fields["motion_id"] for r in recorder.records
                                                 if r.peer == "observer" and r.event == "motion_received"}
            assert swarm["observer"].stats.motions == 1
            assert swarm["observer"].gate.validator.rejected == Counter()  # nothing arrived late
            for name in VALIDATORS:
                assert swarm[name].stats.motions == 2


# --- restarts and durable dedupe -----------------------------------------------------


async def test_a_restarted_peer_does_not_log_a_motion_it_stored_before(
    clock: trio.testing.MockClock, recorder: Recorder, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(recorder, tmp_path) as swarm:
            env = await swarm.outbox("client").send(MessageType.MOTION, motion_bytes())
            await recorder.wait_each(SERVED, "motion_received")
            # durable before it was logged
            (pm,) = swarm["v1"].store.pending_motions()
            assert (pm.motion_id, pm.envelope) == (env.message_id, env.encode())

            await swarm["v1"].stop()
            assert len(recorder.of("v1", "peer_stopped")) == 1
            restarted = await swarm.attach("v1")  # a new gate: its replay window starts empty
            stats = await swarm.serve("v1", first_seq=1_000)  # the same data directory; seq above its old STATUS
            await recorder.wait_each(["v1"], "status_received", 5)  # its own new STATUS, echoed

            # the pool was reloaded from the pending-motion table
            started = recorder.of("v1", "peer_started")
            assert [(r.fields["height"], r.fields["pending"]) for r in started] == [(0, 0), (0, 1)]
            assert started[-1].msg.endswith("; at height 0, 1 motion pending")
            assert restarted.node.pool.get(env.message_id) is not None
            assert len(restarted.node.pool) == 1

            await swarm["client"].endpoint.publish(env.encode())  # the very same bytes again
            await recorder.wait_for(
                lambda: any(r.fields["reason"] == "duplicate" for r in recorder.of("v1", "motion_dropped"))
            )
            others = ["v2", "v3", "v4", "observer", "client"]
            await recorder.wait_for(
                lambda: all(any(r.fields["reason"] == "replay" for r in recorder.of(p, "message_rejected"))
                            for p in others)
            )

            # The fresh gate has no memory of the client's seq, so it admits the envelope;
            # the pool, reloaded from the store, knows the id: a duplicate, not a motion.
            assert restarted.gate.validator.rejected == Counter()
            assert stats.motions == 0
            assert stats.duplicates == 1
            (dup,) = recorder.of("v1", "motion_dropped")
            assert dup.level == logging.DEBUG
            assert dup.fields == {"motion_id": env.message_id.hex(), "reason": "duplicate"}
            assert dup.msg == f"motion {env.message_id.hex()[:12]} not taken: duplicate"
            assert len(recorder.of("v1", "motion_received")) == 1  # only from the first run
            (pm,) = restarted.store.pending_motions()  # stored once, still pending
            assert (pm.motion_id, pm.envelope) == (env.message_id, env.encode())
            # Peers that never restarted stop the copy at their gate as a replay.
            for name in ["v2", "v3", "v4", "observer"]:
                assert swarm[name].stats.motions == 1
                assert swarm[name].stats.duplicates == 0
                assert swarm[name].stats.rejected[RejectReason.REPLAY] == 1
                assert recorder.of(name, "motion_dropped") == []


# --- operator log events -------------------------------------------------------------


async def test_peer_joined_and_left_name_validators_and_clients(
    clock: trio.testing.MockClock, recorder: Recorder, tmp_path: Path
) -> None:
    # Others name a peer outside the validator set as a client, observer or not.
    names = {n: n for n in VALIDATORS} | {"observer": client_name(OBSERVER), "client": client_name(CLIENT)}
    assert client_name(CLIENT).startswith("client 12D3KooW…")
    with trio.fail_after(TIMEOUT):
        async with running(recorder, tmp_path) as swarm:
            for me in SERVED:
                joined = recorder.of(me, "peer_joined")
                expected = {IDENTITIES[n].peer_id: names[n] for n in IDENTITIES if n != me}
                assert {r.fields["peer_id"]: r.fields["peer"] for r in joined} == expected
                assert len(joined) == 5
                for r in joined:
                    assert r.level == logging.INFO
                    assert r.msg == f"peer joined: {r.fields['peer']} ({r.fields['peer_id']})"
                # The node counts the peers it has seen join: everyone had attached before
                # serve_peer ran, so the five queued joins count up to five.
                assert [r.fields["connected"] for r in joined] == [1, 2, 3, 4, 5]

            await swarm["client"].stop()
            await recorder.wait_each(SERVED, "peer_left")
            for me in SERVED:
                (left,) = recorder.of(me, "peer_left")
                assert left.fields == {"peer": client_name(CLIENT), "peer_id": CLIENT.peer_id, "connected": 4}
                assert left.msg == f"peer left: {client_name(CLIENT)} ({CLIENT.peer_id})"

            await swarm["v2"].stop()
            await recorder.wait_each(["v1", "v3", "v4", "observer"], "peer_left", 2)
            assert recorder.of("observer", "peer_left")[-1].fields == {
                "peer": "v2", "peer_id": VALIDATORS["v2"].peer_id, "connected": 3
            }

            await swarm.attach("client")  # a client coming back is announced again
            await recorder.wait_each(["v1", "v3", "v4", "observer"], "peer_joined", 6)
            assert recorder.of("v1", "peer_joined")[-1].fields["peer"] == client_name(CLIENT)


async def test_peer_stopped_reports_the_counters_on_cancellation(
    clock: trio.testing.MockClock, recorder: Recorder, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with running(recorder, tmp_path) as swarm:
            await swarm.outbox("client").send(MessageType.MOTION, motion_bytes())
            await swarm["client"].endpoint.publish(b"\xc1 garbage")
            await recorder.wait_each(SERVED, "motion_received")
            await recorder.wait_each(SERVED, "message_rejected")
            assert recorder.of("observer", "peer_stopped") == []

            await swarm["observer"].stop()
            (rec,) = recorder.of("observer", "peer_stopped")
            assert rec.level == logging.INFO
            assert rec.fields == {
                "name": observer_name(OBSERVER), "height": 0, "motions": 1, "agreements": 0, "decisions": 0,
                "accepted": 5, "rejected": {"undecodable": 1}, "duplicates": 0, "inbound_dropped": 0,
                "published": 0, "frames": 0, "forced": 0, "ballots": {}, "malformed_rpcs": 0, "screened": 0, "bans": 0,
            }
            assert rec.msg == (
                f"peer {observer_name(OBSERVER)} stopped at height 0: motions 1, agreements 0, "
                "messages accepted 5, rejected 1 {'undecodable': 1}, duplicates 0, dropped on overflow 0, screened 0"
            )
            await recorder.wait_each(["v1", "v2", "v3", "v4"], "peer_left")

            await swarm["v3"].stop()
            (rec,) = recorder.of("v3", "peer_stopped")
            assert rec.fields["name"] == "v3"
            assert rec.fields["published"] == 1  # its STATUS: no deliberator, so no ballot
            assert rec.fields["motions"] == 1
            assert (rec.fields["height"], rec.fields["agreements"], rec.fields["decisions"]) == (0, 0, 0)
        # the others stop when the swarm is cancelled, each reporting once
        for name in ("v1", "v2", "v4"):
            assert len(recorder.of(name, "peer_stopped")) == 1
        assert [r.peer for r in recorder.records if r.event == "peer_stopped"].count("v3") == 1
