"""The swarm network over py-libp2p 0.8.1, configured as measured in DESIGN.md.

Noise only (no plaintext, no SECIO, no TLS), yamux, gossipsub offering /meshsub/1.1.0
and 1.0.0 only (1.2's IDONTWANT per message is ruinous here), spam protection and
adaptive gossip off, heartbeat 1 s, the pubsub sequence counter started from
``time.time_ns()`` (so a quick restart is not mistaken for old messages), our own peer
book and reconnect loop, and ``host.close()`` always, in a ``finally``.

Incoming messages are taken from gossipsub's topic validator hook, which runs before
libp2p relays a message: the gate's verdict decides both whether we see it and whether
it is forwarded. Delivery into our bounded ``events`` channel never blocks; the libp2p
subscription (32 deep, overflow dropped) is only drained, since the hook has already
delivered. Publishing goes through one sender task that waits while any peer's
outgoing queue (PEER_QUEUE_SIZE, overflow silently dropped) is nearly full, and that packs whatever
is waiting into one pubsub message (``p2p/bundle.py``): py-libp2p's cost is per message,
so under load hundreds of envelopes a second travel as a few messages.

Given the swarm's validators (``NetworkConfig.validators``), a validator sends each frame
to the others over direct streams (``p2p/direct.py``) instead of gossip: once per peer,
never relayed. Gossip then carries a validator's frames only to observers, on a second
topic only they subscribe to (``follow_topic``), and to the swarm topic as well while a
validator that may be reachable only through others has no direct link (one without a
known address, or connected without a link). A frame that arrives by both paths is
delivered once. Clients and observers publish on the swarm topic as before.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
import weakref
from dataclasses import dataclass, field

import multiaddr
import trio
from google.protobuf.message import DecodeError

# py-libp2p's yamux answers every read with a WINDOW_UPDATE frame by default: one more
# encrypted frame each way per message. Off, it batches them at half a window, as
# go-yamux does (measured: 4-host saturation +29% deliveries, 16-host light-load
# delivery p50 from 382 to 69 ms). It reads this at run time; a user's setting wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.network.config import RetryConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
import libp2p.pubsub.gossipsub as libp2p_gossipsub
import libp2p.pubsub.pubsub as libp2p_pubsub
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from p2p.direct import DIRECT_PROTOCOL, DirectLinks, DirectStats, RecentFrames, direct_stream_handler
from p2p.bundle import ITEM_OVERHEAD, MAX_BUNDLE_ENVELOPES, encode_bundle, split_frame
from p2p.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from p2p.keys import Identity
from p2p.net import (
    INBOX_SIZE,
    MAX_FRAME_BYTES,
    Gate,
    OUTBOX_SIZE,
    MessageArrived,
    NetworkEvent,
    NetworkStats,
    PeerConnected,
    PeerDisconnected,
    offer,
)
from p2p.peer_guard import Admission, PeerGuard
from p2p.peerbook import DialTarget, PeerBook

log = logging.getLogger("conclave.p2p")

GOSSIP_PROTOCOLS = [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]
# Every copy of a message a peer receives costs py-libp2p about half a millisecond of CPU
# (Noise, yamux, protobuf, two signature checks), and gossipsub hands each peer about D
# copies. Measured here at n=16 (bench/bench_gossip.py, light load): D=6/4/12 gave a
# delivery p50 of 53 ms and one motion agreed in 3.8 s; D=4/3/8 gave 18 ms and 2.5 s.
MESH_DEGREE, MESH_DEGREE_LOW, MESH_DEGREE_HIGH = 4, 3, 8
# py-libp2p's outbound queue per peer holds 32 RPCs and drops, silently, what does not
# fit; it takes no size parameter, so pubsub's constructor is given a larger one. A
# relay has no sender that waits: with 32, a burst of 1000 client motions at 200/s was
# lost at one validator in three (156 and 51 motions closed only by their deadline in
# two runs of bench_throughput's load); with 256, none in two runs. The peer's queue
# holds frames of at most 256 KiB (BUNDLE_BYTES), most of them far smaller.
PEER_QUEUE_SIZE = 256
libp2p_pubsub.RpcQueue = functools.partial(RpcQueue, max_size=PEER_QUEUE_SIZE)
# py-libp2p attaches the sender's signed peer record to every pubsub RPC and checks it on
# every one it receives (an ed25519 signature and a peerstore update, twice for an RPC
# with control messages): about 3% of a busy validator's CPU in issue 7's profile. A
# record's bytes already checked for that peer are taken as checked, for a while.
RECORD_RECHECK_S = 600.0  # then checked again, which renews its 2 h peerstore lifetime
_checked_records: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # host -> {peer: (record, when)}
_consume_signed_record = libp2p_pubsub.maybe_consume_signed_record


def _consume_signed_record_once(msg, host, peer_id) -> bool:
    if not msg.HasField("senderRecord"):
        return True
    checked = _checked_records.setdefault(host, {})
    record, now = msg.senderRecord, time.monotonic()
    known = checked.get(peer_id)
    if known is not None and known[0] == record and now - known[1] < RECORD_RECHECK_S:
        return True
    ok = _consume_signed_record(msg, host, peer_id)
    if ok:
        if len(checked) >= 4096:  # peers come and go: a bound, not an eviction policy
            checked.clear()
        checked[peer_id] = (record, now)
    return ok


libp2p_pubsub.maybe_consume_signed_record = _consume_signed_record_once
libp2p_gossipsub.maybe_consume_signed_record = _consume_signed_record_once
PEER_QUEUE_HIGH_WATER = PEER_QUEUE_SIZE * 3 // 4  # our own publishes wait below this
QUEUE_WAIT_S = 5.0  # a peer that reads slowly under load catches up within this
DIAL_TIMEOUT = 5.0
RECONNECT_TICK = 0.25
CLOSE_TIMEOUT = 1.5
HANG_UP_QUEUE = 64
HANG_UP_TIMEOUT = 5.0
SETTLE_LINGER = 0.25
# A bundle (several envelopes in one pubsub message) stays below this many bytes; a
# larger envelope travels alone. Large pubsub messages cost py-libp2p's yamux window
# updates; a quarter of the frame limit keeps one message quick.
BUNDLE_BYTES = 256 * 1024
# gossipsub parks messages for connected peers that have not subscribed (a publish-only
# client): it logs a warning and rescans the queue for each message past the limit.
MAX_PARKED_PER_PEER = 8


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    identity: Identity
    topic: str
    listen_addrs: tuple[str, ...]
    dial: tuple[DialTarget, ...] = ()
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    # A publish-only host (``conclave propose``) must not subscribe: a subscriber
    # publishes only to its gossip mesh, which is empty until a heartbeat or two after
    # connecting, so a quick publish-and-exit would reach nobody. Not subscribed, it
    # sends straight to up to D peers known to subscribe (gossipsub's fanout).
    subscribe: bool = True
    gate: Gate | None = None
    # The peer ids of the swarm's validators: only they may open direct streams to us.
    # If we are one of them, our frames go to the others directly (module docstring);
    # if we are not and we subscribe, we also follow the validators' frames on
    # ``follow_topic``. Empty: gossip only, as any libp2p pubsub peer.
    validators: frozenset[str] = frozenset()
    # Per-peer rate limit and ban, checked on every frame before it is decoded (shared
    # with the gate, which reports the invalid messages that lead to a ban).
    guard: PeerGuard | None = None


def follow_topic(topic: str) -> str:
    """The topic validators publish their frames on for observers (validators do not
    subscribe to it, so it costs them nothing when nobody follows)."""
    return f"{topic}/follow"


class _ConnectionNotifee(INotifee):
    """Turns libp2p's per-connection callbacks into one event per peer."""

    def __init__(self, net: Libp2pNetwork) -> None:
        self._net = net

    async def connected(self, network, conn) -> None:  # type: ignore[override]
        self._net._on_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network, conn) -> None:  # type: ignore[override]
        self._net._on_disconnected(conn.muxed_conn.peer_id)

    async def opened_stream(self, network, stream) -> None:  # type: ignore[override]
        pass

    async def closed_stream(self, network, stream) -> None:  # type: ignore[override]
        pass

    async def listen(self, network, multiaddr) -> None:  # type: ignore[override]
        pass

    async def listen_close(self, network, multiaddr) -> None:  # type: ignore[override]
        pass


@dataclass(eq=False)
class Libp2pNetwork:
    """A started libp2p swarm network; see ``p2p.net.SwarmNetwork``."""

    local_peer: str
    events: trio.MemoryReceiveChannel[NetworkEvent]
    stats: NetworkStats
    listen_addrs: tuple[str, ...]
    _host: object
    _pubsub: Pubsub
    _topic: str
    _events_in: trio.MemorySendChannel[NetworkEvent]
    _outbox: trio.MemorySendChannel[bytes]
    _gate: Gate | None = None
    _guard: PeerGuard | None = None
    _connected: set[str] = field(default_factory=set)
    _unsent: int = 0
    direct_stats: DirectStats = field(default_factory=DirectStats)
    _direct: DirectLinks | None = None  # set when we are a validator among others
    _dialable: frozenset[str] = frozenset()  # peers our reconnect loop dials (known addresses)
    _recent: RecentFrames | None = None  # set when frames may arrive by two paths
    _inbound: dict[str, int] = field(default_factory=dict)  # open direct streams per validator
    _hang_ups: trio.MemorySendChannel[str] | None = None  # banned peers to disconnect (``_hang_up_loop``)
    _hanging_up: set[str] = field(default_factory=set)

    @property
    def host(self):
        """The libp2p host, for our own request/response protocols (``p2p.sync``)."""
        return self._host

    def connected_peers(self) -> frozenset[str]:
        return frozenset(self._connected)

    def topic_peers(self) -> frozenset[str]:
        # Subscribed, and with a pubsub stream open: a publish now would reach them.
        # (Before the stream is up, gossipsub parks messages for a peer, or skips it.)
        subscribed = self._pubsub.peer_topics.get(self._topic, set())
        ready = [p for p in subscribed if p in self._pubsub.peers and p in self._pubsub.router.peer_protocol]
        return frozenset(p.to_base58() for p in ready) & frozenset(self._connected)

    async def publish(self, data: bytes) -> None:
        if len(data) > MAX_FRAME_BYTES:
            raise LocalProtocolError(f"message of {len(data)} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit")
        self._unsent += 1
        try:
            await self._outbox.send(data)
        except BaseException:
            self._unsent -= 1  # cancelled or closed before it was queued
            raise

    async def drain(self) -> None:
        # libp2p offers no event for "peer queue empty": poll (callers bound the wait).
        while (self._unsent or (self._direct is not None and self._direct.pending)
               or any(len(q) for q in self._pubsub.peer_queues.values())):
            await trio.sleep(0.005)

    async def settle(self) -> None:
        """After ``drain``, before closing: one ping round trip with every topic peer,
        then a short linger, so that each has read and handled what we sent. Closing a
        TCP connection that still has unread input sends a reset, and a reset makes the
        peer discard what it had not yet processed. Measured here, publishing 16
        messages to 4 peers then exiting: without this, 1 peer in 4 of a run lost the
        last ones; after a ping alone, 1 peer of 20; with ping and linger, 0 of 60."""
        async with trio.open_nursery() as nursery:
            for peer in self.topic_peers():
                nursery.start_soon(self._ping, ID.from_base58(peer))
        await trio.sleep(SETTLE_LINGER)

    async def _ping(self, peer: ID) -> None:
        with trio.move_on_after(DIAL_TIMEOUT):
            try:
                stream = await self._host.new_stream(peer, [PING_PROTOCOL_ID])
                try:
                    await perform_ping_roundtrip(stream)
                finally:
                    await stream.close()
            except Exception as exc:  # a peer gone meanwhile: nothing more to do for it
                log.debug("settle: ping %s failed: %s", peer, exc)

    async def dial(self, target: DialTarget) -> None:
        """Dial one peer (raises on failure). Clears libp2p's 60 s negative cache first:
        our peer book decides when to retry."""
        peer_id = ID.from_base58(target.peer_id)
        network = self._host.get_network()
        negative = getattr(network, "_negative_peer_cache", None)
        if negative is not None:
            negative.evict(str(peer_id))
        addrs = [multiaddr.Multiaddr(a) for a in target.addrs]
        with trio.fail_after(DIAL_TIMEOUT):
            await self._host.connect(PeerInfo(peer_id, addrs))

    def _on_connected(self, peer: ID) -> None:
        pid = peer.to_base58()
        if pid not in self._connected:
            self._connected.add(pid)
            offer(self._events_in, PeerConnected(pid), self.stats)

    def _on_disconnected(self, peer: ID) -> None:
        pid = peer.to_base58()
        if self._host.get_network().get_connections(peer):
            return  # another connection to the same peer is still open
        if pid in self._connected:
            self._connected.discard(pid)
            offer(self._events_in, PeerDisconnected(pid), self.stats)


class ContainedPubsub(Pubsub):
    """Pubsub that survives a peer's bytes that do not parse as an RPC.

    py-libp2p 0.8.1 parses each inbound RPC with protobuf and catches only its own
    errors around it: a ``DecodeError`` escaped the stream handler and ended the whole
    host, so one bad frame from anyone stopped a peer (seen under load at n=16, where a
    client's host died with it). Here the stream is reset, the peer dropped from pubsub
    as for any dead stream, and the RPC counted (``NetworkStats.malformed_rpcs``)."""

    def __init__(self, *args, stats: NetworkStats, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._stats = stats

    async def stream_handler(self, stream) -> None:
        try:
            await super().stream_handler(stream)
        except DecodeError as exc:
            peer_id = stream.muxed_conn.peer_id
            self._stats.malformed_rpcs += 1
            log.warning("malformed pubsub RPC from %s (%s): stream reset", peer_id, exc)
            with trio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await stream.reset()
                except Exception:  # noqa: BLE001 -- already broken: reset is best effort
                    pass
            self._handle_dead_peer(peer_id)


def _build_host(identity: Identity, listen: list[multiaddr.Multiaddr]):
    key_pair = create_new_key_pair(identity.seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise}, listen_addrs=listen)
    swarm = host.get_network()
    # Our peer book owns dialing: one attempt per dial (the reconnect loop retries with
    # backoff), and no auto-connector redialling every address in the peerstore (it
    # aims for 150 connections and chases clients long gone).
    swarm.retry_config = RetryConfig(max_retries=0)
    if hasattr(swarm, "auto_connector"):
        swarm.auto_connector.maybe_connect = _no_auto_connect
    return host


async def _no_auto_connect() -> None:
    return None


async def run_libp2p_network(cfg: NetworkConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Start a libp2p host on the swarm topic; hands a ``Libp2pNetwork`` to ``task_status``."""
    listen = [multiaddr.Multiaddr(a) for a in cfg.listen_addrs]
    host = _build_host(cfg.identity, listen)
    gossipsub = GossipSub(
        protocols=GOSSIP_PROTOCOLS,
        degree=MESH_DEGREE,
        degree_low=MESH_DEGREE_LOW,
        degree_high=MESH_DEGREE_HIGH,
        heartbeat_interval=1,
        heartbeat_initial_delay=0.1,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=False,
        max_pending_messages_per_peer=MAX_PARKED_PER_PEER,
    )
    stats = NetworkStats()
    pubsub = ContainedPubsub(host, gossipsub, stats=stats)
    pubsub.counter = time.time_ns()  # not int(time.time()): see module docstring
    events_in, events_out = trio.open_memory_channel[NetworkEvent](INBOX_SIZE)
    outbox_in, outbox_out = trio.open_memory_channel[bytes](OUTBOX_SIZE)
    net = Libp2pNetwork(
        local_peer=host.get_id().to_base58(),
        events=events_out,
        stats=stats,
        listen_addrs=(),
        _host=host,
        _pubsub=pubsub,
        _topic=cfg.topic,
        _events_in=events_in,
        _outbox=outbox_in,
        _gate=cfg.gate,
        _guard=cfg.guard,
        _dialable=frozenset(t.peer_id for t in cfg.dial),
    )
    is_validator = net.local_peer in cfg.validators
    follows = bool(cfg.validators) and cfg.subscribe and not is_validator
    if cfg.validators:
        net._recent = RecentFrames()
        host.set_stream_handler(DIRECT_PROTOCOL, direct_stream_handler(
            cfg.validators, MAX_FRAME_BYTES, lambda frame, peer: _admit_frame(net, frame, peer),
            lambda error, data, peer: _refuse(net, error, data, peer), net.direct_stats, net._inbound))
    # Both hooks go in before the host runs, so no early connection or message escapes them.
    host.get_network().register_notifee(_ConnectionNotifee(net))
    pubsub.set_topic_validator(cfg.topic, _gate_hook(net), is_async_validator=False)
    if follows:
        pubsub.set_topic_validator(follow_topic(cfg.topic), _gate_hook(net), is_async_validator=False)
    try:
        # Pubsub first: entering host.run() before pubsub is started can crash it (DESIGN.md).
        async with background_trio_service(pubsub), background_trio_service(gossipsub), host.run(listen_addrs=listen):
            await pubsub.wait_until_ready()
            net.listen_addrs = tuple(str(a) for a in host.get_addrs())
            if listen and not net.listen_addrs:
                # libp2p logs a failed bind at debug and carries on listening on nothing.
                raise ConfigError(f"cannot listen on {', '.join(cfg.listen_addrs)} (address in use?)")
            subscription = await pubsub.subscribe(cfg.topic) if cfg.subscribe else None
            following = await pubsub.subscribe(follow_topic(cfg.topic)) if follows else None
            book = PeerBook(cfg.backoff_initial, cfg.backoff_max, random.Random())
            for target in cfg.dial:
                if target.peer_id != net.local_peer:
                    book.add(target)
            try:
                async with trio.open_nursery() as nursery:
                    if subscription is not None:
                        nursery.start_soon(_drain_subscription, subscription, net)
                    if following is not None:
                        nursery.start_soon(_drain_subscription, following, net)
                    if is_validator and len(cfg.validators) > 1:
                        net._direct = DirectLinks(host, cfg.validators - {net.local_peer}, nursery, net.direct_stats)
                    nursery.start_soon(_send_loop, outbox_out, net)
                    nursery.start_soon(_reconnect_loop, book, net)
                    if cfg.guard is not None:
                        hang_ups_in, hang_ups_out = trio.open_memory_channel[str](HANG_UP_QUEUE)
                        net._hang_ups = hang_ups_in
                        nursery.start_soon(_hang_up_loop, hang_ups_out, net)
                    task_status.started(net)
                    await trio.sleep_forever()
            finally:
                # Stop accepting before the connections go: otherwise the peers, seeing
                # us leave, redial at once, get in, and see us leave a second time.
                with trio.move_on_after(CLOSE_TIMEOUT / 3, shield=True):
                    await _close_listeners(host)
    finally:
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await host.close()


async def _close_listeners(host) -> None:
    for listener in list(host.get_network().listeners.values()):
        try:
            await listener.close()
        except Exception as exc:  # already closing: nothing to do
            log.debug("closing listener: %s", exc)


def _gate_hook(net: Libp2pNetwork):
    """gossipsub's synchronous topic validator: called once per new message (own
    publishes included) before it is delivered or relayed; False stops both."""

    def hook(forwarder: ID, msg) -> bool:
        return _admit_frame(net, bytes(msg.data), forwarder.to_base58())

    return hook


def _admit_frame(net: Libp2pNetwork, data: bytes, source: str) -> bool:
    """Judge each envelope of one frame with the gate and deliver the good ones; True
    if all were good (gossip relays only such a frame). A frame seen before by the other
    path (direct or gossip) is not delivered again."""
    guard = net._guard
    # Before the frame cache: a frame dropped here is not judged, so a copy of it from
    # an honest peer must still be.
    if guard is not None and source != net.local_peer:
        admission = guard.admit(source, trio.current_time())
        if admission is not Admission.ADMIT:  # counted by the guard (PeerGuard.screened)
            if admission is Admission.BANNED:
                _hang_up(net, source)
            return False
    digest = None
    if net._recent is not None:
        digest = RecentFrames.digest(data)
        seen = net._recent.get(digest)
        if seen is not None:
            net.direct_stats.duplicates += 1
            return seen
    try:
        parts = split_frame(data)
    except RemoteProtocolError as exc:
        _refuse(net, exc, data, source)
        return False
    gate, relay = net._gate, True
    for part in parts:
        verdict = None
        if gate is not None:
            try:
                verdict = gate.admit(part, source)
            except Exception:  # a bug in the gate must not kill libp2p's receive task
                log.exception("gate failed on a message from %s; dropped", source)
            if verdict is None:
                # The good envelopes of a bundle are still delivered, but the bundle
                # is not relayed: a bad envelope stops at the first honest peer.
                net.stats.gated += 1
                relay = False
                continue
        net.stats.received += 1
        offer(net._events_in, MessageArrived(part, source, verdict), net.stats)
    if digest is not None:
        net._recent.add(digest, relay)
    return relay


def _hang_up(net: Libp2pNetwork, source: str) -> None:
    """Ask ``_hang_up_loop`` to close the connection of a banned peer (once while it is
    pending; a full queue is no loss: the peer's next frame asks again)."""
    if net._hang_ups is None or source in net._hanging_up or source not in net._connected:
        return
    try:
        net._hang_ups.send_nowait(source)
    except trio.WouldBlock:
        return
    net._hanging_up.add(source)


async def _hang_up_loop(hang_ups: trio.MemoryReceiveChannel[str], net: Libp2pNetwork) -> None:
    # A banned peer's frames are already dropped unread; closing its connection also
    # stops its traffic costing us reads and decryption. Our reconnect loop does not
    # dial it while the ban lasts; if it dials us, its first frame closes it again.
    async for source in hang_ups:
        try:
            with trio.move_on_after(HANG_UP_TIMEOUT):
                await net._host.disconnect(ID.from_base58(source))
            log.info("closed the connection of banned peer %s", source)
        except Exception as exc:  # libp2p raises many types for a connection going away
            log.debug("closing the connection of banned peer %s: %s", source, exc)
        finally:
            net._hanging_up.discard(source)


def _refuse(net: Libp2pNetwork, error: RemoteProtocolError, data: bytes, source: str) -> None:
    net.stats.gated += 1
    if net._gate is not None:
        try:
            net._gate.refuse(error, data, source)
        except Exception:  # a bug in the gate must not kill libp2p's receive task
            log.exception("gate failed on a malformed frame from %s", source)


async def _drain_subscription(subscription, net: Libp2pNetwork) -> None:
    # The gate hook has delivered each message already; the subscription must still be
    # emptied or libp2p's 32-deep queue fills and logs every overflow.
    while True:
        await subscription.get()


async def _send_loop(outbox: trio.MemoryReceiveChannel[bytes], net: Libp2pNetwork) -> None:
    carried: bytes | None = None  # took it from the outbox, but it did not fit the last bundle
    while True:
        if carried is None:
            try:
                carried = await outbox.receive()
            except trio.EndOfChannel:
                return
        # One scheduling pass first: a producer that has just been woken by the space
        # we made in the outbox adds its next message, and it joins this bundle.
        await trio.sleep(0)
        batch, size = [carried], len(carried)
        carried = None
        # Whatever else is already waiting goes in the same pubsub message: under load
        # that turns hundreds of messages a second into a few (p2p/bundle.py).
        while len(batch) < MAX_BUNDLE_ENVELOPES:
            try:
                data = outbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if size + len(data) + ITEM_OVERHEAD > BUNDLE_BYTES:
                carried = data
                break
            batch.append(data)
            size += len(data) + ITEM_OVERHEAD
        frame = encode_bundle(batch)
        if net._direct is None:
            await _publish(net, net._topic, frame)
        else:
            await _send_direct(net, net._direct, frame)
        net.stats.published += len(batch)
        net.stats.frames += 1
        net._unsent -= len(batch)


async def _send_direct(net: Libp2pNetwork, direct: DirectLinks, frame: bytes) -> None:
    connected = net.connected_peers()
    linked = frozenset(p for p in direct.peers if direct.linkable(p, connected))
    # A validator we dial but are not connected to is taken to be down (it catches up
    # when back); one we cannot dial, or connected without a link, may hear us through
    # others: gossip carries the frame to it, and to the observers on the way.
    by_gossip = direct.peers - linked - (net._dialable - connected)
    _admit_frame(net, frame, net.local_peer)  # our own, delivered back, as pubsub does
    await direct.send(frame, linked, QUEUE_WAIT_S)
    if by_gossip:
        await _publish(net, net._topic, frame)
    elif net._pubsub.peer_topics.get(follow_topic(net._topic)):
        await _publish(net, follow_topic(net._topic), frame)


async def _publish(net: Libp2pNetwork, topic: str, frame: bytes) -> None:
    # py-libp2p drops, silently, what does not fit in a peer's queue (PEER_QUEUE_SIZE): wait for the
    # fullest queue to drain before adding more. Bounded, so that one stuck peer cannot
    # stop us; past the bound the message may be lost for that peer (counted: the
    # protocol above re-sends what matters).
    with trio.move_on_after(QUEUE_WAIT_S) as waited:
        while any(len(q) >= PEER_QUEUE_HIGH_WATER for q in net._pubsub.peer_queues.values()):
            await trio.sleep(0.002)
    if waited.cancelled_caught:
        net.stats.forced += 1
    await net._pubsub.publish(topic, frame)


async def _reconnect_loop(book: PeerBook, net: Libp2pNetwork) -> None:
    async def attempt(target: DialTarget) -> None:
        try:
            await net.dial(target)
        except Exception as exc:  # libp2p raises many types for an unreachable peer
            wait = book.dial_failed(target.peer_id, trio.current_time())
            log.debug("dial %s failed (%s); next attempt in %.1fs", target.peer_id, exc, wait)
        else:
            book.dial_succeeded(target.peer_id)

    while True:
        now = trio.current_time()
        due = book.due(now, net.connected_peers())
        if net._guard is not None:
            due = [t for t in due if not net._guard.is_banned(t.peer_id, now)]
        if due:
            async with trio.open_nursery() as dials:
                for target in due:
                    dials.start_soon(attempt, target)
        await trio.sleep(RECONNECT_TICK)
