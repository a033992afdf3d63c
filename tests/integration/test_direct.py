"""Direct streams between validators over real libp2p hosts on 127.0.0.1 (p2p/direct.py,
p2p/libp2p_net.py): a validator's frames go once to each validator it is linked to, are
judged by the receiver's gate and never relayed; observers follow them on the follow
topic; a validator without a link hears them by gossip, delivered once everywhere; a
peer that is not a validator cannot open a direct stream.

Topology is explicit, as in test_bundles.py: each host dials only the hosts a test
names, so "not connected" really is. Waits poll a predicate under ``trio.fail_after``.
"""

from __future__ import annotations

import dataclasses
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.peer.id import ID

from agents.metrics import PeerMetrics
from agents.peer import PeerGate
from p2p.bundle import encode_bundle
from p2p.direct import DIRECT_PROTOCOL
from p2p.envelope import Envelope, MessageType
from p2p.errors import RejectReason
from p2p.keys import Identity
from p2p.libp2p_net import NetworkConfig, follow_topic, run_libp2p_network
from p2p.messages import Status
from p2p.peerbook import DialTarget
from p2p.reqresp import FRAME_PREFIX
from p2p.swarmfile import PROTOCOL_VERSION, SwarmConfig, Validator, default_topic
from tests.integration.test_bundles import Host, collect, until

pytestmark = pytest.mark.integration

WAIT = 60.0
LISTEN = ("/ip4/127.0.0.1/tcp/0",)
VALIDATORS = {name: Identity(bytes([0x81 + i]) * 32) for i, name in enumerate(("v1", "v2", "v3", "v4"))}
OTHERS = {"obs": Identity(b"\x91" * 32), "stranger": Identity(b"\x92" * 32)}
SWARM = SwarmConfig(
    "direct", default_topic("direct"), PROTOCOL_VERSION,
    tuple(Validator(name, ident.peer_id, ident.public_key, 1) for name, ident in VALIDATORS.items()),
)
STATUS = Status("x", "0.1.0", ()).encode()


def status(identity: Identity, seq: int) -> bytes:
    return Envelope.seal(identity, SWARM.swarm_id, MessageType.STATUS, seq, STATUS).encode()


@asynccontextmanager
async def hosts(names: list[str], edges: list[tuple[str, str]]):
    """The named hosts (validators know the validator set; the stranger runs plain gossip
    and no gate), each connected to exactly its neighbours in ``edges``."""
    async with trio.open_nursery() as nursery:
        started: dict[str, Host] = {}
        with trio.fail_after(WAIT):
            for name in names:
                metrics = PeerMetrics()
                gate = PeerGate(SWARM, metrics=metrics) if name != "stranger" else None
                ident = VALIDATORS.get(name) or OTHERS[name]
                cfg = NetworkConfig(ident, SWARM.topic, LISTEN, gate=gate,
                                    validators=SWARM.validator_peer_ids if name != "stranger" else frozenset())
                started[name] = Host(name, await nursery.start(run_libp2p_network, cfg), gate, metrics)
                nursery.start_soon(collect, started[name])
            for a, b in edges:
                await started[a].net.dial(DialTarget(started[b].peer, started[b].net.listen_addrs))
        neighbours = {n: {started[b].peer for a, b in edges if a == n} | {started[a].peer for a, b in edges if b == n}
                      for n in names}
        await until(lambda: all(neighbours[n] <= started[n].net.topic_peers() and neighbours[n] <= mesh(started[n])
                                for n in names), "gossip mesh along every edge")
        if "obs" in started:  # the validators it is connected to know it follows them
            obs = started["obs"].peer
            await until(lambda: all(obs in {p.to_base58() for p in started[n].net._pubsub.peer_topics.get(
                follow_topic(SWARM.topic), ())} for n in names if started[n].peer in neighbours["obs"]),
                "the observer's follow subscription is known")
        try:
            yield started
        finally:
            nursery.cancel_scope.cancel()


def mesh(host: Host) -> set[str]:
    return {p.to_base58() for p in host.net._pubsub.router.mesh.get(SWARM.topic, ())}


FULL = [("v1", "v2"), ("v1", "v3"), ("v2", "v3"), ("v1", "v4"), ("v2", "v4"), ("v3", "v4")]


async def test_validator_frames_go_directly_once_to_each_validator_and_to_observers_by_follow() -> None:
    async with hosts(["v1", "v2", "v3", "v4", "obs"], FULL + [("obs", "v1"), ("obs", "v2")]) as h:
        v1 = h["v1"]
        sent = [status(VALIDATORS["v1"], seq) for seq in range(1, 51)]
        with trio.fail_after(WAIT):
            for data in sent:
                await v1.net.publish(data)
            await v1.net.drain()
        for name in ("v1", "v2", "v3", "v4", "obs"):
            host = h[name]
            await until(lambda: len(host.arrived) >= 50, f"{name} has all 50 envelopes")
        for name in ("v2", "v3", "v4"):
            host = h[name]
            assert host.data() == sent, f"{name}: not the 50 envelopes, once each, in order"
            assert {m.source for m in host.arrived} == {v1.peer}, name
            assert host.net.direct_stats.received >= 1 and host.net.direct_stats.duplicates == 0, name
            assert host.net.stats.gated == 0 and not host.gate.validator.rejected, name
        assert v1.data() == sent  # its own, delivered back once
        # Gossip carried v1's frames only to the observer, on the follow topic, which the
        # validators do not subscribe to: so v2 (the observer's other link) relayed none.
        assert h["obs"].data() == sent and h["obs"].net.direct_stats.received == 0
        assert {m.source for m in h["obs"].arrived} == {v1.peer}
        frames = v1.net.stats.frames
        assert v1.net.direct_stats.sent == 3 * frames, "each frame went once to each of the 3 validators"
        assert v1.net.direct_stats.dropped == 0 and v1.net.direct_stats.link_failures == 0


async def test_a_validator_without_a_link_hears_by_gossip_and_everyone_delivers_once() -> None:
    # v4 is connected to v2 only and has no known address: v1 cannot reach it directly,
    # so v1's frames go by gossip too. v2 and v3 get both copies and deliver one.
    async with hosts(["v1", "v2", "v3", "v4"], [("v1", "v2"), ("v1", "v3"), ("v2", "v3"), ("v2", "v4")]) as h:
        v1 = h["v1"]
        sent = [status(VALIDATORS["v1"], seq) for seq in range(1, 21)]
        with trio.fail_after(WAIT):
            for data in sent:
                await v1.net.publish(data)
            await v1.net.drain()
        for name in ("v1", "v2", "v3", "v4"):
            host = h[name]
            await until(lambda: len(host.arrived) >= 20, f"{name} has all 20 envelopes")
        frames = v1.net.stats.frames
        for name in ("v2", "v3"):
            host = h[name]
            await until(lambda: host.net.direct_stats.duplicates + host.net.direct_stats.received >= 2 * frames,
                        f"{name} got every frame by both paths")
        for name in ("v1", "v2", "v3", "v4"):
            host = h[name]
            assert host.data() == sent, f"{name}: not the 20 envelopes, once each"
            assert host.net.stats.gated == 0 and not host.gate.validator.rejected, name
        assert h["v4"].net.direct_stats.received == 0  # nobody has a link to it
        assert {m.source for m in h["v4"].arrived} == {h["v2"].peer}  # relayed by gossip
        assert v1.net.direct_stats.sent == 2 * frames


async def test_a_direct_frame_is_judged_by_the_gate_and_a_stranger_cannot_open_a_stream() -> None:
    async with hosts(["v1", "v2", "stranger"], [("v1", "v2"), ("stranger", "v2")]) as h:
        v1, v2, stranger = h["v1"], h["v2"], h["stranger"]
        good = status(VALIDATORS["v1"], 1)
        env = Envelope.seal(VALIDATORS["v1"], SWARM.swarm_id, MessageType.STATUS, 2, STATUS)
        forged = dataclasses.replace(env, signature=bytes(64)).encode()
        with trio.fail_after(WAIT):  # v1 writes a frame by hand on its own stream to v2
            stream = await v1.net.host.new_stream(ID.from_base58(v2.peer), [DIRECT_PROTOCOL])
            frame = encode_bundle([good, forged])
            await stream.write(FRAME_PREFIX.pack(len(frame)) + frame)
        await until(lambda: v2.net.stats.gated >= 1 and len(v2.arrived) >= 1, "v2 judged the frame")
        assert v2.data() == [good] and v2.rejections(RejectReason.BAD_SIGNATURE) == 1

        # A stream from a peer outside the validator set is reset before anything is read.
        with trio.fail_after(WAIT):
            frame = status(OTHERS["stranger"], 1)
            try:
                rogue = await stranger.net.host.new_stream(ID.from_base58(v2.peer), [DIRECT_PROTOCOL])
                await rogue.write(FRAME_PREFIX.pack(len(frame)) + frame)
            except Exception:  # reset while opening or writing: as good
                pass
        await until(lambda: v2.net.direct_stats.refused_streams == 1, "v2 refused the stranger's stream")
        barrier = status(VALIDATORS["v1"], 3)
        with trio.fail_after(WAIT):
            await stream.write(FRAME_PREFIX.pack(len(barrier)) + barrier)
        await until(lambda: len(v2.arrived) >= 2, "the barrier reached v2")
        assert v2.data() == [good, barrier], "the stranger's frame was delivered"

        # A length above the frame limit is refused and ends the stream.
        with trio.fail_after(WAIT):
            await stream.write(FRAME_PREFIX.pack(10**9))
        await until(lambda: v2.rejections(RejectReason.TOO_LARGE) == 1, "v2 refused the oversized frame")
